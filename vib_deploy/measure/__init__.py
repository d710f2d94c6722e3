"""Measurement: the timing core, benches (CPU and GPU), latency tables, memory, machine facts, per-node profiles."""
