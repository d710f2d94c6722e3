"""The paper table's list of settings that differ from the official VIBNet code, read from the config."""

from conftest import ROOT
from vib_deploy.config import load_config
from vib_deploy.studies.paper import OFFICIAL, deviations


def _row(lines, key):
    return next(line for line in lines if line.startswith(f"| {key} |"))


def test_every_setting_is_listed_and_read_from_the_config():
    default = load_config(ROOT / "pipelines/mnist-lenet300.yaml")
    official_like = load_config(ROOT / "pipelines/mnist-lenet300.yaml",
                                ["train.vib.gate_lr=1e-3", "train.vib.epochs=300", "train.batch_size=128",
                                 "train.finetune.epochs=20"])
    lines = deviations({"a": default, "b": official_like})
    assert len([line for line in lines if line.startswith("| ") and "---" not in line]) == len(OFFICIAL) + 1
    gate = _row(lines, "gate lr")
    assert "**differs**: 0.01 (10× the weight lr)" in gate and "same: 0.001 (= weight lr)" in gate
    assert "**differs**: 100 VIB epochs" in _row(lines, "epochs") and "same: 300 VIB epochs" in _row(lines, "epochs")
    assert "**differs**: cosine annealing to 0 over the 100 VIB epochs" in _row(lines, "schedule")
    assert "**differs**: 0 on weights and gates" in _row(lines, "weight decay")
    step = deviations({"c": load_config(ROOT / "pipelines/mnist-lenet300.yaml",
                                        ["train.vib.weight_decay=5e-5", "train.vib.schedule=step"])})
    assert "same: 5e-05 on weights and gates" in _row(step, "weight decay")
    assert "same: step: lr × 0.5 every 30 epochs" in _row(step, "schedule")
    tuned = _row(lines, "after pruning")
    assert "same: none" in tuned and "**differs**: finetune stage: 20 epochs" in tuned
    assert "best validation epoch" in _row(lines, "selection")
