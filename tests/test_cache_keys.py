"""Cache keys do not move: every stage's cache-key section, for the pipelines and run configs of main at f9b6225
(before the house move; tests/fixtures/keys-f9b6225/), equals what that code computed (sections.json, made by
running the same function below with f9b6225 on PYTHONPATH). A key added to a section since must be keyed only
when set (stages/registry.py KEYED_WHEN_SET), so run directories made before keep every stage `[cached]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SNAPSHOT = FIXTURES / "keys-f9b6225" / "sections.json"
CONFIGS = sorted((FIXTURES / "keys-f9b6225").glob("*.yaml")) + sorted(FIXTURES.glob("main-run-*/config.yaml"))


def sections(path: Path) -> dict:
    """{stage: [its cache-key section, the stages it needs under this config, enabled]} as JSON sees it."""
    from vib_deploy.config import load_config
    from vib_deploy.stages.registry import STAGES

    config = load_config(path)
    stages = {s.name: (s.section(config), list(s.needs_when(config)), s.enabled(config)) for s in STAGES}
    return json.loads(json.dumps(stages, sort_keys=True, default=str))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_stage_keeps_its_cache_key(path):
    old = json.loads(SNAPSHOT.read_text())[f"{path.parent.name}/{path.name}"]
    new = sections(path)
    assert set(new) >= set(old)  # stages added since are new keys, not changed ones
    changed = [name for name in old if new[name] != old[name]]
    assert not changed, f"{path.name}: cache-key sections changed for {changed}: {[new[n] for n in changed]}"


def test_a_changed_setting_changes_a_section(tmp_path):
    """The comparison can fail: the same config with one keyed value changed differs in that stage's section."""
    source = FIXTURES / "keys-f9b6225" / "mnist-lenet300.yaml"
    changed = tmp_path / "mnist-lenet300.yaml"
    changed.write_text(source.read_text().replace("kl_factor: 8.0e-4", "kl_factor: 9.0e-4"))
    assert sections(changed)["train-vib"] != sections(source)["train-vib"]
    assert sections(changed)["train-dense"] == sections(source)["train-dense"]
