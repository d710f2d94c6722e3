"""Run directories: atomic files, the sha256 manifest, stage cache keys, the run lock, sidecars and verify."""
