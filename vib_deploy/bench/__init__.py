"""Benches of deployments: dense vs pruned in process, latency tables timed on the target, per-node profiles,
the GPU bench and GPU day, and what this machine offers (`vib-deploy env`)."""
