"""PyTorch eager backend: loads a model saved by vib-deploy (architecture + weights)."""

from __future__ import annotations

import numpy as np

from vib_deploy.backends.base import Runner


class TorchRunner(Runner):
    name = "torch"
    artifact_suffix = ".pt"
    bench_stage = True

    def activate_impl(self) -> None:
        import torch

        from vib_deploy.nets import load_model

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.model = load_model(self.path)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()

    def deactivate_impl(self) -> None:
        del self.model
