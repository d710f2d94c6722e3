"""ResNet-20: `paper` vs `flops` vs `latency` KL weighting -- error against measured time on one target.

Usage: python docs/scripts/kl_weighting.py ENGINE-PRECISION@BATCH OUT.png RUN...   (finished, benched runs)

Prints one markdown row per run: weighting, kl_factor, kept widths, FLOPs (ideal speedup), validation and test error
of the pruned deployment on the target, its p50 on the target, the best dense deployment's p50 of the same bench (the same
process, alternating) and the ratio of the two; draws test error against that ratio (the dense net at 1.0).
Timings of different runs come from different bench calls, so only the ratio within a run is compared across rows.
"""

import sys
from pathlib import Path

from vib_deploy.config import Target, read_run_config
from vib_deploy.deploy.choose import candidates
from vib_deploy.records import RunSummary
from vib_deploy.report.plots import pyplot, save_png
from vib_deploy.runs.directory import RunDir

name, _, batch = sys.argv[1].partition("@")
target = Target(*name.rsplit("-", 1), int(batch or 64))
out = Path(sys.argv[2])
rows, points = [], {}
print(
    f"| weighting | kl_factor | kept | KFLOPs (ideal) | val error | test error | pruned {sys.argv[1]} ms "
    "| best dense ms (engine) | speedup |"
)
print("|---|---|---|---|---|---|---|---|---|")
dense_error = None
for path in map(Path, sys.argv[3:]):
    s, vib = RunSummary.read(RunDir(path)), read_run_config(path).train.vib
    deployments, _ = candidates(s, target.batch)
    mine = next(
        d for d in deployments if (d.engine, d.precision, d.variant) == (target.engine, target.precision, "pruned")
    )
    dense = min((d for d in deployments if d.variant == "dense"), key=lambda d: d.p50_ms)
    speedup = dense.p50_ms / mine.p50_ms
    dense_error = s.dense.error
    widths = "-".join(map(str, s.pruned.architecture))
    print(
        f"| {vib.kl_weighting} | {vib.kl_factor:g} | {widths} | {s.pruned.flops / 1e3:,.0f} ({s.ideal_speedup:.2f}x) "
        f"| {mine.val_error:.2%} | {mine.error:.2%} | {mine.p50_ms:.2f} "
        f"| {dense.p50_ms:.2f} ({dense.engine} {dense.precision}) | {speedup:.2f}x |"
    )
    points.setdefault(vib.kl_weighting, []).append((speedup, mine.error, vib.kl_factor))

plt = pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
for weighting, pts in sorted(points.items()):
    pts.sort()
    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=f"kl_weighting: {weighting}")
    for x, y, kl in pts:
        ax.annotate(f"{kl:g}", (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
if dense_error is not None:
    ax.plot([1.0], [100 * dense_error], "k*", markersize=10, label="dense fp32")
ax.set_xlabel(f"speedup of pruned {sys.argv[1]} over the best dense deployment (same bench)")
ax.set_ylabel("test error (%)")
ax.set_title("ResNet-20, Fashion-MNIST 32x32, CPU budget (seed 0)")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
save_png(fig, out)
print(f"\nplot: {out}")
