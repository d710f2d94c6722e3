"""Experiment tracking: a tiny run logged to a real local MLflow store (sqlite), read back with MLflow's client."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli

mlflow = pytest.importorskip("mlflow", reason="MLflow is the optional extra `track` (make setup installs it with dev)")

TINY = [
    "data.train_limit=600",
    "data.val_size=100",
    "data.test_limit=200",
    "train.dense.epochs=2",
    "train.vib.epochs=3",
    "bench.rounds=1",
    "bench.iters_per_round=1",
    "bench.warmup=0",
    "bench.batch_sizes=[1]",
    "bench.memory=false",
    "bench.backends=[onnxruntime]",
    "train.finetune.epochs=0",
]


@pytest.mark.e2e
def test_a_run_is_logged_and_a_rerun_continues_it(tmp_path, mnist_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "run",
        str(ROOT / "pipelines/mnist-lenet300.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        *[a for s in [*TINY, f"track.mlflow={{uri: '{uri}', experiment: tiny}}"] for a in ("--set", s)],
    ]
    proc = run_cli(*args, cwd=tmp_path)  # MLflow's default artifact root is ./mlruns of the working directory
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "mlflow-run.json").read_text())
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.vib.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "vib.val_acc")] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "vib.units_alive.0")) == 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert run.data.metrics["test_error.pruned"] == pytest.approx(metrics["pruned"]["error"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.md", "plots"} <= artifacts
    again = run_cli(*args, cwd=tmp_path)  # every stage cached: the same MLflow run, nothing logged twice
    assert (
        again.returncode == 0
        and json.loads((tmp_path / "run" / "mlflow-run.json").read_text())["run_id"] == state["run_id"]
    )
    assert len(client.get_metric_history(run.info.run_id, "vib.val_acc")) == 3
    assert len(client.search_runs([run.info.experiment_id])) == 1
