"""What a run reports: metrics.json and report.md, plots, statistics, experiment tracking."""
