"""Which model file a run deploys: the fine-tuned net when its finetune stage is on, else the pruned one.

Export, openvino, quantize, bench (and so ship) take `deployed_file`; the exactness check stays in prune
(pruned vs VIB). Its own module so that the stages of stages.py and cpu_deploy.py share it without a cycle.
"""

from __future__ import annotations

from typing import Any


def finetuned(config: Any) -> bool:
    """The finetune stage is on (train.finetune.epochs > 0)."""
    return config.train.finetune.epochs > 0


def deployed_file(config: Any, variant: str) -> str:
    """The model file a variant ("dense", "pruned", "pruned_reduced") is exported and timed from."""
    if variant == "dense":
        return "dense.pt"
    return variant.replace("pruned", "finetuned" if finetuned(config) else "pruned", 1) + ".pt"


def deployed_error(ctx: Any) -> float:
    """Test error of the deployed pruned net: finetune.json's when the stage is on, else prune.json's."""
    return ctx.read_json("finetune.json" if finetuned(ctx.config) else "prune.json")["test_error"]
