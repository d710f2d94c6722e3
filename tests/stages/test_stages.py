"""The stage registry (vib_deploy/stages/registry.py) is the only list of stages: the CLI's stage commands,
`run --until`, `--force` and the peer runs of studies/compare all follow it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vib_deploy import pipeline
from vib_deploy.cli.app import app
from vib_deploy.config import parse_config
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import Manifest
from vib_deploy.stages import STAGE_NAMES, STAGES, get_stage
from vib_deploy.stages.registry import commands, peer_stages, stages_until

ALL_ON = {"train": {"finetune": {"epochs": 1}}, "quantize": {"enabled": True}, "bench": {"backends": ["openvino"]}}


def _config(**tree):
    return parse_config({"name": "t", "model": {"name": "lenet300"}, **tree}, "test")


def test_names_are_unique_and_needs_come_first():
    assert len(set(STAGE_NAMES)) == len(STAGES)
    for i, stage in enumerate(STAGES):
        assert set(stage.needs) | set(stage.after) <= set(STAGE_NAMES[:i]), stage.name


def test_every_stage_has_a_cli_command_with_its_help():
    registered = {c.name or c.callback.__name__: c for c in app.registered_commands}  # type: ignore[union-attr]
    assert set(STAGE_NAMES) <= set(registered)
    for stage in commands():
        assert stage.help and registered[stage.name].callback.__doc__ == stage.help


def test_the_stage_commands_are_listed_in_pipeline_order():
    names = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
    assert [n for n in names if n in STAGE_NAMES] == list(STAGE_NAMES)


def test_every_stage_runs_a_function_that_exists():
    import importlib

    for stage in STAGES:
        module, _, function = stage.run.__qualname__.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), stage.name


def test_a_stage_that_is_not_registered_is_refused():
    with pytest.raises(UserError, match="stages are train-dense, train-vib"):
        get_stage("deploy")


@pytest.fixture
def ran(monkeypatch):
    """Run the pipeline with every stage stubbed: (stage, forced) in the order run_pipeline ran them."""
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(pipeline, "_preflight", lambda *a: None)
    monkeypatch.setattr(pipeline, "run_stage", lambda ctx, s, force=False, **kw: calls.append((s.name, force)))
    return calls


@pytest.mark.parametrize("until", STAGE_NAMES)
def test_until_runs_the_registry_up_to_that_stage(until, ran, tmp_path):
    pipeline.run_pipeline(_config(**ALL_ON), tmp_path / "run", until=until, echo=lambda m: None)
    assert [name for name, _ in ran] == list(STAGE_NAMES[: STAGE_NAMES.index(until) + 1])
    assert [s.name for s in stages_until(until)] == [name for name, _ in ran]


@pytest.mark.parametrize("force", STAGE_NAMES)
def test_force_reruns_from_that_stage_on_in_registry_order(force, ran, tmp_path):
    pipeline.run_pipeline(_config(**ALL_ON), tmp_path / "run", force=force, echo=lambda m: None)
    assert ran == [(name, i >= STAGE_NAMES.index(force)) for i, name in enumerate(STAGE_NAMES)]


def test_a_stage_that_is_off_is_skipped_and_says_so(ran, tmp_path):
    said: list[str] = []
    pipeline.run_pipeline(_config(), tmp_path / "run", echo=said.append)
    off = [s.name for s in STAGES if not s.enabled(_config())]
    assert off and [f"[off] {n}" for n in off] == said
    assert [name for name, _ in ran] == [s.name for s in STAGES if s.enabled(_config())]


@pytest.mark.parametrize(
    "tree, expected",
    [
        ({}, ["export", "bench"]),
        # a pipeline that quantizes benches INT8, so its peers make their INT8 models too (the bench refused without)
        (
            {"quantize": {"enabled": True, "openvino": "nncf"}, "bench": {"backends": ["onnxruntime", "openvino"]}},
            ["export", "openvino", "quantize", "bench"],
        ),
    ],
)
def test_peer_runs_run_their_prune_then_the_registry_peer_stages_that_are_on(monkeypatch, tmp_path, tree, expected):
    from vib_deploy.studies import peer_run

    fake_prune = SimpleNamespace(
        dense_architecture=[784, 300, 100], architecture=[20, 10, 5], pruned=SimpleNamespace(flops=1)
    )
    monkeypatch.setattr(peer_run.PruneRecord, "read", staticmethod(lambda run: fake_prune))
    monkeypatch.setattr(peer_run, "load_model", lambda path: None)
    monkeypatch.setattr(peer_run, "dense_widths", lambda model: [300, 100])
    monkeypatch.setattr(peer_run, "copy_stage", lambda *a: True)
    ran: list[tuple[str, tuple[str, ...]]] = []
    monkeypatch.setattr(peer_run, "run_stage", lambda ctx, s, **kw: ran.append((s.name, s.needs)))
    vib = SimpleNamespace(path=tmp_path / "vib", verified=lambda name: Path(name), view=lambda: Manifest({}, {}))
    monkeypatch.setattr(Manifest, "sha256", lambda self, name: "0" * 64)
    peer_run.run_peer(_config(**tree), vib, "l1")  # type: ignore[arg-type]
    assert ran[0] == ("prune", ("train-dense",))
    assert [name for name, _ in ran[1:]] == expected
    assert [s.name for s in peer_stages()] == ["export", "openvino", "quantize", "bench"]


def test_a_key_added_later_is_keyed_only_when_set():
    """train.dense.patience (added after runs were made) leaves the train-dense key of existing runs as it was."""
    section = get_stage("train-dense").section
    default, patient = section(_config()), section(_config(train={"dense": {"patience": 5}}))
    assert default["dense"] == {"epochs": 10, "lr": 1e-3, "weight_decay": 0.0}  # the key runs were made with
    assert patient["dense"] == {**default["dense"], "patience": 5}


def test_round_to_auto_keys_on_a_named_target_and_not_otherwise():
    section = get_stage("prune").section
    auto = {"prune": {"round_to": "auto"}, "bench": {"backends": ["onnxruntime", "openvino"]}}
    assert section(_config(**auto))["auto"] == {"backend": "onnxruntime", "threads": 1}  # as runs were made
    named = section(_config(**auto, deploy={"target": "openvino-fp32@64"}))
    assert named["auto"] == {"target": "openvino-fp32@64", "threads": 1}
    assert "auto" not in section(_config(deploy={"target": "openvino-fp32@64"}, bench={"backends": ["openvino"]}))


def test_quantize_openvino_is_keyed_only_when_set_to_nncf_with_its_budget_and_the_ir():
    """Left unset (qdq) the quantize key and inputs are those runs were made with; nncf keys the budget NNCF holds
    (deploy.max_error_increase) and reads the openvino stage's IR."""
    stage = get_stage("quantize")
    on = {"quantize": {"enabled": True}, "bench": {"backends": ["onnxruntime", "openvino"]}}
    default = _config(**on)
    assert stage.section(default) == {
        "quantize": {"enabled": True, "calibration_images": 300, "per_channel": True},  # the key runs were made with
        "data": stage.section(default)["data"],
    }
    assert stage.needs_when(default) == () and "openvino" not in stage.needs
    nncf = _config(**{**on, "quantize": {"enabled": True, "openvino": "nncf"}}, deploy={"max_error_increase": 0.01})
    assert stage.section(nncf)["quantize"]["openvino"] == "nncf" and stage.section(nncf)["max_error_increase"] == 0.01
    assert stage.needs_when(nncf) == ("openvino",)


def test_nncf_without_openvino_in_the_bench_is_refused():
    with pytest.raises(UserError, match="quantize.openvino: nncf quantizes the OpenVINO IR; bench.backends"):
        _config(quantize={"enabled": True, "openvino": "nncf"}, bench={"backends": ["onnxruntime"]})
