"""Settings-search table (docs/vib-training.md, issue 25): one markdown row per finished run directory.

Usage: python docs/scripts/settings_search.py RUN...   (names under runs/; reads the train-vib, prune and finetune
records: kept widths, FLOPs, validation and test error of the pruned and of the fine-tuned net)
"""

import sys
from pathlib import Path

from vib_deploy.config import read_run_config
from vib_deploy.records import FinetuneRecord, PruneRecord, TrainVibRecord
from vib_deploy.runs.directory import RunDir

print("| run | settings | kept | FLOPs | × fewer | val: pruned → fine-tuned | test: pruned → fine-tuned |")
print("|---|---|---|---|---|---|---|")
for name in sys.argv[1:]:
    run = RunDir(Path("runs") / name)
    vib, prune, tuned = TrainVibRecord.read(run), PruneRecord.read(run), FinetuneRecord.read(run)
    c = read_run_config(run.path).train.vib
    settings = f"kl {c.kl_factor:g}, gate lr {c.gate_lr:g}, wd {c.weight_decay:g}, {c.schedule}"
    settings += f", EMA {c.ema}" if c.ema else ""
    flops = prune.pruned.flops
    print(
        f"| `runs/{name}` | {settings} | {'-'.join(map(str, prune.architecture))} | {flops / 1e3:,.1f} K "
        f"| {prune.dense.flops / flops:.1f}× | {vib.val_error:.2%} → {tuned.val_error:.2%} "
        f"| {prune.test_error:.2%} → {tuned.test_error:.2%} |"
    )
