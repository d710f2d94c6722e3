"""The report stage: metrics.json, report.md and plots (report.py)."""

from __future__ import annotations

from vib_deploy.stages.base import Context


def report(ctx: Context) -> list[str]:
    """metrics.json, report.md and plots."""
    from vib_deploy.report.summary import write_report

    return write_report(ctx.run, ctx.config, ctx.out)
