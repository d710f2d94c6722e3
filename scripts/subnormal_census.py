"""Where VIB training's subnormal floats live: at each epoch's last Adam step, the subnormal entries of every parameter,
its gradient and Adam's two moments, and of every module's output and output gradient summed over the epoch.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/subnormal_census.py runs/census [--flush off] [--set key=value ...]

Runs the default LeNet-300 pipeline (2 dense epochs, 4 VIB epochs) into RUN_DIR; `--flush off` trains without
vib_deploy/training/numerics.py's flush-to-zero, to see what it removes.
"""

from __future__ import annotations

import collections
import contextlib
import sys
from typing import Any

import torch

import vib_deploy.training.loop as loop
from vib_deploy.training.numerics import subnormal_count

STEPS_PER_EPOCH = 550  # 55,000 training images, batch 100
seen: collections.Counter[str] = collections.Counter()


def _census(model: torch.nn.Module, stage: str) -> Any:
    """Count at each epoch's last Adam step and in module hooks; returns Adam's own step (to restore)."""
    names = {p: n for n, p in model.named_parameters()}
    original = torch.optim.Adam.step
    steps = [0]

    def step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        steps[0] += 1
        if steps[0] % STEPS_PER_EPOCH == 0:
            print(
                f"{stage} epoch {steps[0] // STEPS_PER_EPOCH}: (param, grad, exp_avg, exp_avg_sq) subnormal", flush=True
            )
            for group in self.param_groups:
                for p in group["params"]:
                    s = self.state.get(p, {})
                    counts = [subnormal_count(t) for t in (p, p.grad, s.get("exp_avg"), s.get("exp_avg_sq"))]
                    if any(counts):
                        print(f"  {names[p]} {tuple(p.shape)}: {counts}", flush=True)
            print(f"  activations (summed over the epoch's steps): {dict(+seen)}", flush=True)
            seen.clear()
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = step  # type: ignore[method-assign]
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(lambda m, i, o, name=name: seen.update({f"out {name}": subnormal_count(o)}))
            module.register_full_backward_hook(
                lambda m, gi, go, name=name: seen.update({f"grad-out {name}": sum(map(subnormal_count, go))})
            )
    return original


def main() -> None:
    run_dir, rest = sys.argv[1], sys.argv[2:]
    if rest[:2] == ["--flush", "off"]:
        rest = rest[2:]
        loop.flush_denormal = lambda: contextlib.nullcontext(False)  # type: ignore[assignment]
        loop.flush_subnormals_ = lambda tensors: None  # type: ignore[assignment]
    train = loop.train

    def counted(model: torch.nn.Module, spec: Any, *args: Any, **kwargs: Any) -> Any:
        original = _census(model, spec.stage)
        try:
            return train(model, spec, *args, **kwargs)
        finally:
            torch.optim.Adam.step = original  # type: ignore[method-assign]

    loop.train = counted  # type: ignore[assignment]
    from vib_deploy.cli.app import main as cli

    sets = ["train.vib.epochs=4", "train.dense.epochs=2", "train.dense.patience=null", *rest[1::2]]
    sys.argv = ["vib-deploy", "run", "pipelines/mnist-lenet300.yaml", "--run-dir", run_dir, "--until", "train-vib"]
    sys.argv += [a for s in sets for a in ("--set", s)]
    torch.set_flush_denormal(False)
    cli()


if __name__ == "__main__":
    main()
