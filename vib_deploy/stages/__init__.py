"""The stages: each reads verified artifacts, calls the library and writes its artifacts atomically.

`base` holds `Stage` and `Context`, `registry` the one list of stages; a module per stage family does the work:
training (train-dense, train-vib, finetune), pruning (prune), deploy (export, bench), reporting (report), and
cpu_deploy.py (openvino, quantize). Each stage writes to `ctx.out(name)`; its outputs move into the run directory
when it commits. What each deployed variant is made from is decided in deployed.py.

Under torchrun every rank runs the training stages (the loop is data-parallel) and rank 0 alone writes
their artifacts; the other stages run on rank 0 only (see `pipeline.run_stage`).
"""

from vib_deploy.stages.base import Context, Stage
from vib_deploy.stages.registry import STAGE_NAMES, STAGES, get_stage, keyed_section

__all__ = ["STAGES", "STAGE_NAMES", "Context", "Stage", "get_stage", "keyed_section"]
