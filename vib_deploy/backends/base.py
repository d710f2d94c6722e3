"""The runner interface every backend implements (after Polygraphy's BaseRunner): activate, infer, deactivate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class Runner(ABC):
    """Runs one model artifact. Heavy libraries are imported inside `activate`, never at module import."""

    name: str = "base"
    artifact_suffix: str = ""  # which artifact the runner loads: ".onnx" or ".pt"

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        self.active = False

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the backend can run here, else why not and how to install it."""
        return None

    @property
    def device(self) -> str:
        return "cpu"

    def activate(self) -> Runner:
        """Load the model (idempotent); returns self."""
        if not self.active:
            self.activate_impl()
            self.active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (float32 numpy in, float32 numpy out)."""
        if not self.active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        return self.infer_impl(x)

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:  # noqa: B027 (optional hook: most runners free nothing)
        pass
