"""Shipping to Triton: the model repository, a local server, and benchmarks through it."""
