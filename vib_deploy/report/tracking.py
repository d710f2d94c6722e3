"""Experiment tracking (optional): a pipeline run logged to MLflow.

    track: {mlflow: {uri: sqlite:///mlflow.db, experiment: my-experiment}}

One MLflow run per run directory: its id is kept in `<run>/mlflow-run.json`, so a resumed or repeated
`vib-deploy run` continues the same MLflow run. Logged as each stage finishes (cached stages included, each
stage once per cache key): the resolved config as params; per training epoch (step = epoch) validation
accuracy, loss, CE, KL and units alive per gate layer; the final figures of metrics.json; and metrics.json,
report.md and the plots as artifacts. `mlflow` is imported here only, and only when tracking is on
(`pip install -e .[track]`: mlflow-skinny with SQLAlchemy for a local sqlite store, no server).
"""

from __future__ import annotations

import json
from typing import Any

from vib_deploy.errors import UserError, first_line
from vib_deploy.records import RunSummary, TrainDenseRecord, TrainVibRecord
from vib_deploy.runs.directory import RunDir, atomic_write_json, read_json_file

NOT_INSTALLED = (
    "track.mlflow is set but MLflow is not installed; `pip install -e .[track]` "
    "(mlflow-skinny, sqlalchemy, alembic) or remove the track section"
)
STATE = "mlflow-run.json"  # {"uri", "experiment", "run_id", "logged": {stage: cache key}}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def create_experiment(uri: str, experiment: str) -> None:
    """Create `experiment` at `uri` unless it exists (a study's driver, before its units log to it)."""
    try:
        import mlflow
    except ImportError as e:
        raise UserError(NOT_INSTALLED) from e
    try:
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment)
    except Exception as e:  # MLflow raises its own types for bad URIs and unreachable servers
        raise UserError(f"track.mlflow: cannot create experiment {experiment} at {uri} ({first_line(e)})") from e


class MlflowTracker:
    """Logs a run directory's stages to one MLflow run; a context manager that ends the run FINISHED or FAILED."""

    def __init__(self, config: Any, run: RunDir):
        try:
            import mlflow
        except ImportError as e:
            raise UserError(NOT_INSTALLED) from e
        self.mlflow, self.config, self.run = mlflow, config, run
        self.settings = config.track.mlflow
        path = run.file(STATE)
        self.state: dict[str, Any] = read_json_file(path) if path.exists() else {}
        if (self.state.get("uri"), self.state.get("experiment")) != (self.settings.uri, self.settings.experiment):
            self.state = {"uri": self.settings.uri, "experiment": self.settings.experiment, "logged": {}}

    def __enter__(self) -> MlflowTracker:
        mlflow = self.mlflow
        try:
            mlflow.set_tracking_uri(self.settings.uri)
            mlflow.set_experiment(self.settings.experiment)
            active = mlflow.start_run(
                run_id=self.state.get("run_id"), run_name=None if self.state.get("run_id") else self.config.name
            )
        except Exception as e:  # MLflow raises its own types for bad URIs, unreachable servers, deleted runs
            raise UserError(
                f"track.mlflow: cannot start a run at {self.settings.uri} ({type(e).__name__}: {first_line(e)})"
            ) from e
        if self.state.get("run_id") is None:
            self.state["run_id"] = active.info.run_id
            self._save()
        mlflow.log_params(
            {
                k: json.dumps(v) if isinstance(v, (list, dict)) else v
                for k, v in _flatten(self.config.model_dump(mode="json")).items()
                if not k.startswith("track.")
            }
        )
        mlflow.set_tag("vib_deploy.run_dir", str(self.run.path.resolve()))
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.mlflow.end_run(status="FINISHED" if kind is None else "FAILED")

    def _save(self) -> None:
        atomic_write_json(self.run.file(STATE), self.state)

    def log_stage(self, stage: str) -> None:
        """Log what `stage` made, once per cache key (a cached stage already logged is skipped)."""
        record = self.run.view().stages.get(stage)
        if record is None or self.state["logged"].get(stage) == record.key:
            return
        if stage == "train-dense":
            self._log_history(stage, TrainDenseRecord.read(self.run).history)
        elif stage == "train-vib":
            self._log_history(stage, TrainVibRecord.read(self.run).history)
        elif stage == "report":
            self._log_report()
        self.state["logged"][stage] = record.key
        self._save()

    def _log_history(self, stage: str, history: list[dict[str, Any]]) -> None:
        prefix = stage.replace("train-", "")
        for entry in history:
            values = {
                f"{prefix}.{k}": float(v) for k, v in entry.items() if k != "epoch" and isinstance(v, (int, float))
            }
            values.update({f"{prefix}.units_alive.{i}": float(n) for i, n in enumerate(entry.get("units_alive") or [])})
            self.mlflow.log_metrics(values, step=int(entry["epoch"]))

    def _log_report(self) -> None:
        s = RunSummary.read(self.run)
        figures = {
            "test_error.dense": s.dense.error,
            "test_error.vib": s.vib.error,
            "test_error.pruned": s.pruned.error,
            "flops.dense": s.dense.flops,
            "flops.pruned": s.pruned.flops,
            "params.pruned": s.pruned.params,
            "ideal_speedup": s.ideal_speedup,
            "prune.max_abs_diff": s.prune.max_abs_diff,
        }
        figures.update({f"speedup.{r.backend}.b{r.batch}.{r.variant}": r.speedup for r in s.speedup})
        self.mlflow.log_metrics({k: float(v) for k, v in figures.items() if v is not None})
        artifacts = self.run.view().artifacts
        for name in (RunSummary.FILE, "report.md", *sorted(n for n in artifacts if n.startswith("plots/"))):
            self.mlflow.log_artifact(
                str(self.run.verified(name)), artifact_path="plots" if name.startswith("plots/") else None
            )
