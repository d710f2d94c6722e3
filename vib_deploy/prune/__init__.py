"""Structural pruning: the result record and its exactness check, and the two ways nets are cut."""
