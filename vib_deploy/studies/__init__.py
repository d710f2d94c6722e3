"""Studies over many runs: sweeps, peer-method comparisons and the paper's tables."""
