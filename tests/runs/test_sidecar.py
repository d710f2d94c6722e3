"""One sidecar helper: write, read and check `<artifact>.json`; CPU facts from one place."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from vib_deploy.errors import UserError
from vib_deploy.measure.machine import ISA_FLAGS, cpu_info, machine_info, parse_cpuinfo
from vib_deploy.runs.sidecar import check_sidecar, read_sidecar, sidecar_path, write_sidecar

PACKAGE = Path(__file__).resolve().parents[2] / "vib_deploy"


def test_sidecar_round_trip_and_checks(tmp_path):
    plan = tmp_path / "model.plan"
    assert write_sidecar(plan, {"v": "1.0", "cc": "9.0"}) == sidecar_path(plan) == tmp_path / "model.plan.json"
    assert read_sidecar(plan, "rebuild") == {"v": "1.0", "cc": "9.0"}
    assert check_sidecar(plan, [("v", "lib", "1.0"), ("cc", "compute capability", "9.0")], "built", "fix") == {
        "v": "1.0",
        "cc": "9.0",
    }
    with pytest.raises(UserError) as e:
        check_sidecar(plan, [("v", "lib", "1.0"), ("cc", "compute capability", "8.0")], "built", "rebuild it")
    assert str(e.value) == f"{plan} was built for compute capability 9.0, this is compute capability 8.0; rebuild it"


def test_missing_or_corrupt_sidecar_says_how_to_remake_it(tmp_path):
    xml = tmp_path / "m.xml"
    with pytest.raises(UserError, match=r"m.xml: no sidecar m.xml.json; make it again$"):
        check_sidecar(xml, [], "made", "fix", missing_fix="make it again")
    sidecar_path(xml).write_text("{not json")
    with pytest.raises(UserError, match="m.xml.json is corrupt or altered: not JSON .*; fix$"):
        read_sidecar(xml, "fix")
    sidecar_path(xml).write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a JSON object"):
        read_sidecar(xml, "fix")


def test_no_sidecar_is_read_or_written_by_hand_in_the_backends():
    """The backends and engine go through vib_deploy.runs.sidecar (no json.loads / `.json` path of their own)."""
    found = []
    for path in [*(PACKAGE / "backends").glob("*.py"), PACKAGE / "deploy" / "engine.py"]:
        text = path.read_text()
        if "json.loads" in text or 'name + ".json"' in text or '+ ".json")' in text:
            found.append(path.name)
    assert not found, found


def test_cpuinfo_parsing_by_hand():
    text = "processor : 0\nmodel name : Some CPU @ 2GHz\nflags : fpu avx2 fma amx_tile\n\nmodel name : Other\n"
    assert parse_cpuinfo(text) == ("Some CPU @ 2GHz", {"fpu", "avx2", "fma", "amx_tile"})
    info = cpu_info()
    assert set(info) == {"cpu", "isa"} and info["isa"] == [f for f in ISA_FLAGS if f in info["isa"]]
    assert set(machine_info()) == {"cpu", "vector_isa", "cores", "python", "max_rss_self_bytes"}  # bench.json's machine


@pytest.mark.parametrize(
    "flags,isa",
    [
        pytest.param("fpu sse4_2 avx", "no AVX2", id="pre-avx2"),
        pytest.param("avx avx2 fma", "AVX2", id="epyc-zen2"),
        pytest.param("avx2 avx512f avx512bw avx512vl avx512_vnni", "AVX2, AVX-512, AVX-512 VNNI", id="cascade-lake"),
        pytest.param("avx2 avx_vnni", "AVX2, AVX-VNNI", id="alder-lake"),
        pytest.param(
            "avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16",
            "AVX2, AVX-512, AVX-512 VNNI, AVX-VNNI, AMX",
            id="sapphire-rapids",
        ),
    ],
)
def test_the_vector_isa_is_named_from_the_flags(monkeypatch, flags, isa):
    from vib_deploy.measure import machine

    text = f"processor : 0\nmodel name : Fake Xeon\nflags : {flags}\n"
    monkeypatch.setattr(machine, "Path", lambda _: SimpleNamespace(read_text=lambda: text))
    machine.cpu_facts.cache_clear()
    try:
        facts = machine.cpu_facts()
        assert facts.vector_isa == isa and machine.machine_info()["vector_isa"] == isa
        assert machine.cpu_label(machine.machine_info()) == f"Fake Xeon ({isa})"
    finally:
        machine.cpu_facts.cache_clear()
    assert machine.cpu_label({"cpu": "Old"}) == "Old (vector ISA not recorded)"  # a bench.json made before the field


def test_cpu_facts_are_read_in_one_module():
    readers = [p.name for p in PACKAGE.rglob("*.py") if '"/proc/cpuinfo"' in p.read_text()]
    assert readers == ["machine.py"]


def test_no_stage_reads_cpu_facts_through_the_openvino_backend():
    for path in (PACKAGE / "stages").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "vib_deploy.backends.openvino" not in imported, path.name
