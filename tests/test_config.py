"""Pipeline files: validation errors name the key; --set overrides parse as YAML."""

from pathlib import Path

import pytest

from vib_deploy.config import load_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    config = load_config(path)
    assert config.name == path.stem


def test_overrides(tmp_path):
    c = load_config(
        PIPELINES / "mnist-lenet5.yaml", ["train.vib.kl_factor=2e-5", "bench.batch_sizes=[1,8]", "train.seed=3"]
    )
    assert c.train.vib.kl_factor == 2e-5
    assert c.bench.batch_sizes == [1, 8]
    assert c.train.seed == 3


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\nmodel: {name: lenet300}\ntrain: {epochz: 3}\n", "unknown key 'train.epochz'"),
        ("name: x\n", "missing key 'model'"),
        ("name: x\nmodel: {name: resnet9000}\n", "key 'model.name'"),
        ("name: x\nmodel: {name: lenet300}\ntrain: {batch_size: -1}\n", "key 'train.batch_size'"),
        ("name: x\nmodel: {name: lenet300}\ntrain: {vib: {kl_factor: lots}}\n", "key 'train.vib.kl_factor'"),
        ("name: x\nmodel: {name: lenet300}\nexport: {opset: 11}\n", "key 'export.opset'"),
        ("name: x\nmodel: {name: lenet300}\nbench: {batch_sizes: []}\n", "key 'bench.batch_sizes'"),
        ("name: 'bad name/..'\nmodel: {name: lenet300}\n", "key 'name'"),
        ("- a\n- b\n", "expected a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("", "the file is empty"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    from vib_deploy.errors import UserError

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(path)


def test_bad_override_and_missing_file(tmp_path):
    from vib_deploy.errors import UserError

    with pytest.raises(UserError, match="expected key.path=value"):
        load_config(PIPELINES / "mnist-lenet300.yaml", ["train.seed"])
    with pytest.raises(UserError, match="unknown key 'train.vib.nope'"):
        load_config(PIPELINES / "mnist-lenet300.yaml", ["train.vib.nope=1"])
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_deploy_target_parses_and_must_be_benched():
    from vib_deploy.config import Target
    from vib_deploy.errors import UserError

    pipeline = PIPELINES / "fashion-resnet20-cpu.yaml"  # openvino + onnxruntime, int8 on, batches 1 and 64
    assert load_config(pipeline).target() is None  # auto
    assert load_config(pipeline, ["deploy.target=openvino-int8@1"]).target() == Target("openvino", "int8", 1)
    assert load_config(pipeline, ["deploy.target=onnxruntime-fp32"]).target() == Target("onnxruntime", "fp32", 64)
    for target, message in [
        ("openvino-int8@32", "batch 32 is not in bench.batch_sizes"),
        ("torch-fp32", "engine 'torch' is not in bench.backends"),
        ("openvino-fp16", "key 'deploy.target'"),
        ("fastest", "key 'deploy.target'"),
    ]:
        with pytest.raises(UserError, match=f"^{pipeline}: .*{message}"):
            load_config(pipeline, [f"deploy.target={target}"])
    with pytest.raises(UserError, match="int8 needs quantize.enabled: true"):
        load_config(pipeline, ["deploy.target=openvino-int8", "quantize.enabled=false"])
