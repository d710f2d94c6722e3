"""`vib-deploy profile --backend openvino`: OpenVINO's per-node time, grouped by resolution."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from vib_deploy.deploy.export import export_onnx

pytest.importorskip("openvino")


def test_openvino_profile_groups_nodes_by_resolution(tmp_path, capsys) -> None:
    from vib_deploy.bench.ov_profile import by_resolution, profile_openvino
    from vib_deploy.bench.profile import print_profile

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # at 16x16
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # at 8x8
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    export_onnx(net.eval(), tmp_path / "m.onnx", (1, 16, 16), 18)
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    records = profile_openvino(tmp_path / "m.onnx", x, runs=3)
    assert records and all(r["mean_us"] > 0 for r in records)
    assert sum(r["share"] for r in records) == pytest.approx(1.0)
    groups = {g["resolution"]: g for g in by_resolution(records)}
    assert {"16x16", "8x8"} <= set(groups)
    assert groups["16x16"]["convs"] == 2 and groups["8x8"]["convs"] == 1  # ReLUs fused into the convs
    print_profile([("m.onnx", records)], 4, top=3)
    out = capsys.readouterr().out
    assert "by resolution" in out and "16x16" in out


def test_profile_refuses_an_unknown_backend(tmp_path) -> None:
    from vib_deploy.bench.profile import profile_run
    from vib_deploy.errors import UserError

    with pytest.raises(UserError, match="onnxruntime or openvino"):
        profile_run(tmp_path, 4, 3, 1, backend="tensorrt")
