"""Model sources (vib_deploy/stages/sources.py): loading a user's factory, clear errors, saved module models, and a
user model with a residual add, a depthwise conv, a concat and a grouped conv through the whole pipeline."""

import json
import textwrap

import pytest
import torch

from tests.conftest import ROOT, assert_user_error, run_cli
from vib_deploy.errors import UserError
from vib_deploy.model.factory import build_net, resolve_factory
from vib_deploy.nets import load_model
from vib_deploy.stages.sources import ModuleSource

BRANCHY = "tests/user_models/branchy.py:build"


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("def build(:\n", "importing"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
        ("x = 1\n", "has no function 'build'"),
        ("def build():\n    raise ValueError('width must be even')\n", "raised ValueError: width must be even"),
        ("def build():\n    return 42\n", "returned int, not a torch.nn.Module"),
    ],
)
def test_broken_factories_are_one_line_errors(tmp_path, source, fragment):
    (tmp_path / "net.py").write_text(source)
    proc = run_cli("inspect", f"{tmp_path / 'net.py'}:build")
    assert_user_error(proc, fragment)


@pytest.mark.parametrize(
    "ref, fragment",
    [
        ("no_colon.py", "expected 'path/to/file.py:function'"),
        ("missing/net.py:build", "file missing/net.py not found"),
        ("vib_deploy.zoo.resnet:resnet99", "has no function 'resnet99'"),
    ],
)
def test_bad_factory_references(ref, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_factory(ref)


def test_package_reference_and_kwargs():
    net = build_net("vib_deploy.zoo.vgg:vgg16", {"width": 0.125})
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_inspect_prints_groups_and_reasons():
    proc = run_cli("inspect", BRANCHY, "--input-shape", "1,28,28", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "head: fixed: output layer" in proc.stdout and "self-check" in proc.stdout
    assert "res_conv1" in proc.stdout and "gated" in proc.stdout
    assert_user_error(
        run_cli("inspect", BRANCHY, "--input-shape", "3,28,28"), "fails on an input of shape (1, 3, 28, 28)"
    )
    # a pipeline file: its factory, kwargs and the data's shape (VGG-16 at 1/8 width on 32x32)
    proc = run_cli("inspect", "pipelines/vgg16-fashion.yaml", "--kwarg", "width=0.125", env={"COLUMNS": "200"})
    assert (
        proc.returncode == 0
        and "input [1, 32, 32]" in proc.stdout
        and "classifier.3: fixed: output layer" in proc.stdout
    )


def test_inspect_real_architectures_from_the_command_line():
    """A channel shuffle is one line naming the op, the module and the ignore entry; with it, inspect runs."""
    shuffle = "tests/archnets.py:shufflenet_modules"
    assert_user_error(
        run_cli("inspect", shuffle, "--input-shape", "1,16,16"),
        "channel_shuffle (channel shuffle) in stage2.0.shuffle",
        "list stage2.0.shuffle under model.ignore",
    )
    ignore = [arg for i in range(3) for arg in ("--ignore", f"stage2.{i}.shuffle")]
    proc = run_cli("inspect", shuffle, "--input-shape", "1,16,16", *ignore, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert "stage2.1.branch2.3" in proc.stdout and "passes through stage2.0.shuffle" in proc.stdout


@pytest.mark.parametrize("width", [80, 56])
def test_inspect_keeps_group_names_whole_at_80_columns(width):
    import io

    from rich.console import Console

    from vib_deploy.stages.sources import inspect_model, print_inspection

    info = inspect_model(f"{ROOT}/tests/archnets.py:densenet", (1, 16, 16), [], [])
    console = Console(width=width, file=io.StringIO(), record=True)
    print_inspection(info, console)
    text = console.export_text()
    table_lines = text.split("exact-pruning")[0].splitlines()
    names = [r["group (root)"] for r in info["rows"]]
    assert "block2.layers.2.conv2" in names and all(len(line) <= width for line in text.splitlines())
    for name in names:  # each name whole on its own row of the table, not only in the fixed-reason lines below it
        assert any(line.split() and line.split()[0] == name for line in table_lines), name
    assert (
        "…" not in text and "%FLOPs" in text
    )  # no header or cell cut either: columns are left out instead, and said so
    header = next(line for line in table_lines if "group (root)" in line).split()  # 9 columns, "group (root)" two words
    assert ("left out" in text) == (len(header) < 10) and (width > 56 or "left out" in text)


def test_saved_module_model_loads_from_another_directory(tmp_path, monkeypatch):
    source = ModuleSource(BRANCHY, {"width": 4}, (1, 28, 28))
    net = source.dense().eval()
    path = tmp_path / "dense.pt"
    monkeypatch.chdir(ROOT)
    source.save(net, path)
    monkeypatch.chdir(tmp_path)  # the relative factory path no longer resolves; the absolute one in the file does
    loaded = load_model(path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))


TINY = [
    "--set",
    "data.train_limit=600",
    "--set",
    "data.val_size=100",
    "--set",
    "data.test_limit=300",
    "--set",
    "train.batch_size=50",
    "--set",
    "train.dense.epochs=1",
    "--set",
    "train.vib.epochs=2",
    "--set",
    "train.vib.kl_factor=1e-3",
    "--set",
    "train.vib.gate_lr=0.5",
    "--set",
    "bench.backends=[onnxruntime]",
    "--set",
    "bench.batch_sizes=[1,8]",
    "--set",
    "bench.rounds=2",
    "--set",
    "bench.iters_per_round=3",
    "--set",
    "bench.warmup=1",
    "--set",
    "bench.memory=false",
    "--set",
    "train.finetune.epochs=0",
]


@pytest.mark.e2e
def test_user_model_through_the_whole_pipeline(tmp_path, mnist_root):
    pipeline = tmp_path / "branchy.yaml"
    pipeline.write_text(
        textwrap.dedent(f"""\
        name: branchy
        model:
          factory: {ROOT / BRANCHY}
          kwargs: {{width: 8}}
          input_shape: [1, 28, 28]
        """)
    )
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(pipeline), "--run-dir", str(run_dir), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prune = json.loads((run_dir / "prune.json").read_text())
    export = json.loads((run_dir / "export.json").read_text())
    assert prune["max_abs_diff_float64"] <= 1e-9 * prune["logit_scale"]
    assert prune["max_abs_diff"] <= 1e-5 * prune["logit_scale"]
    assert prune["pruned"]["flops"] < prune["dense"]["flops"]  # something was cut ...
    assert sum(prune["architecture"]) < sum(prune["dense_architecture"])
    for variant in ("dense", "pruned"):  # ... and ONNX Runtime agrees with torch on real images
        assert export[variant]["max_abs_diff"] <= 1e-4 and export[variant]["argmax_agreement"] >= 0.999
    pruned = load_model(run_dir / "pruned.pt")  # rebuilt by the factory + the pruning record
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in build_net(BRANCHY, {}).parameters())
    assert run_cli("verify", str(run_dir)).returncode == 0
    # the finetune stage on a factory net: saved as factory + pruning record, exported from finetuned.pt
    tuned = run_cli("run", str(pipeline), "--run-dir", str(run_dir), *TINY, "--set", "train.finetune.epochs=1")
    assert tuned.returncode == 0 and "[run] finetune" in tuned.stderr, tuned.stderr[-3000:]
    export = json.loads((run_dir / "export.json").read_text())
    assert export["pruned"]["model_file"] == "finetuned.pt" and export["pruned"]["max_abs_diff"] <= 1e-4
    assert [p.shape for p in load_model(run_dir / "finetuned.pt").parameters()] == [
        p.shape for p in pruned.parameters()
    ]
    # a changed model file retrains: the cache key holds the file's sha256
    copy = tmp_path / "branchy_copy.py"
    copy.write_text((ROOT / BRANCHY.split(":")[0]).read_text() + "\n# changed\n")
    pipeline.write_text(pipeline.read_text().replace(str(ROOT / BRANCHY.split(":")[0]), str(copy)))
    again = run_cli("run", str(pipeline), "--run-dir", str(run_dir), *TINY, "--until", "train-dense")
    assert again.returncode == 0 and "[run] train-dense" in again.stderr
    assert "stopped after train-dense" in again.stdout and "train-vib" not in again.stderr  # --until stops there


def test_a_model_that_cannot_be_pruned_exactly_fails_before_training(tmp_path, mnist_root):
    (tmp_path / "sig.py").write_text(
        textwrap.dedent("""\
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2, self.head = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 10)

            def forward(self, x):
                return self.head(torch.relu(self.c2(torch.sigmoid(self.c1(x)))).mean((2, 3)))

        def build():
            return Net()
        """)
    )
    (tmp_path / "p.yaml").write_text(f"name: sig\nmodel: {{factory: '{tmp_path / 'sig.py'}:build'}}\n")
    proc = run_cli("run", str(tmp_path / "p.yaml"), "--run-dir", str(tmp_path / "run"), *TINY)
    assert_user_error(proc, "group of c1", "cannot be pruned exactly", "model.ignore")
    assert not (tmp_path / "run" / "train-dense.ckpt").exists()


def test_input_shape_must_match_the_data(tmp_path, mnist_root):
    (tmp_path / "p.yaml").write_text(f"name: x\nmodel: {{factory: '{ROOT / BRANCHY}', input_shape: [1, 32, 32]}}\n")
    assert_user_error(
        run_cli("run", str(tmp_path / "p.yaml"), "--run-dir", str(tmp_path / "run")),
        "model.input_shape [1, 32, 32] does not match the data's images [1, 28, 28]",
    )
    (tmp_path / "v.yaml").write_text("name: v\nmodel: {name: vgg16}\n")
    assert_user_error(run_cli("run", str(tmp_path / "v.yaml"), "--run-dir", str(tmp_path / "run2")), "set data.pad: 2")


def test_model_output_must_be_class_logits(tmp_path):
    from vib_deploy.stages.sources import ModuleSource

    source = ModuleSource(BRANCHY, {"num_classes": 7}, (1, 28, 28))
    with pytest.raises(UserError, match="gives 7 logits but the data has 10 classes"):
        source.check(source.dense())
    (tmp_path / "flat.py").write_text("from torch import nn\ndef build():\n    return nn.Conv2d(1, 4, 3)\n")
    assert_user_error(run_cli("inspect", f"{tmp_path / 'flat.py'}:build"), "expects logits of shape (batch, classes)")
