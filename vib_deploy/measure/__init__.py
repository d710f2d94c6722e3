"""The measuring core: one clock and percentile (timing), machine facts (CPU model and ISA), free memory, and the
latency lookup tables' maths and cache."""
