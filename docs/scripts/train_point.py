"""Train one VIB point's training stages (train-dense shared per seed), for settings searches.

Usage: python docs/scripts/train_point.py PIPELINE SEED KL LABEL [KEY=VALUE ...]
Writes runs/<name>-<label>-kl<KL>-s<SEED>: the dense stage is reused from (or trained into) the run directory
`vib-deploy paper` uses for that seed, then train-vib, prune and finetune run as `vib-deploy run PIPELINE --set
train.seed=SEED --set train.vib.kl_factor=KL --set KEY=VALUE ...` would run them. Bench it afterwards with
`vib-deploy run PIPELINE --run-dir runs/<...> --set ...` (the same sets), nothing else running.
"""

import sys
from pathlib import Path

from vib_deploy.pipeline import run_pipeline
from vib_deploy.runs.directory import RunDir
from vib_deploy.studies.common import copy_stage, ensure_dense, point_config

pipeline, seed, kl, label = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sets = sys.argv[5:]
c = point_config(pipeline, sets, seed, kl)
d = ensure_dense(c, Path("runs"), None, print, "")
t = RunDir(Path("runs") / f"{c.name}-{label}-kl{kl:g}-s{seed}")
copy_stage(d, t, "train-dense")
run_pipeline(c, t.path, None, None, print, until="finetune")
print("done", t.path)
