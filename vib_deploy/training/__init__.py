"""Training: the one loop (dense, VIB, fine-tune), checkpoints, torchrun, accelerators, KL weighting, EMA, evaluation."""
