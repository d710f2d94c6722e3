"""A corpus of bad inputs, each through the real CLI: exit code 2, one `error:` line on stderr that names
the file or key at fault, and never a traceback.

- pipeline files: tests/corpus/configs/*.yaml, each saying on its first line what the error must contain;
- `--set` overrides with bad syntax or bad values;
- dataset files: wrong magic, truncated, padded, count mismatches, labels out of range, bad gzip, a
  corrupt cache (built per case from a small valid synthetic dataset);
- run directories: a copy of one real tiny run per case, with a checkpoint, model, ONNX file, manifest or
  config broken in a different way, and runs whose pruning would delete a whole layer.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LENET300, ROOT, TINY, assert_user_error, run_cli

CORPUS = Path(__file__).resolve().parent / "corpus" / "configs"
PIPELINE = LENET300


# -- pipeline files -------------------------------------------------------------------------------------
CONFIG_FILES = sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_big_enough():
    assert len(CONFIG_FILES) >= 30


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_bad_pipeline_file(path, tmp_path):
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    assert first.startswith("# expect: "), f"{path.name}: the first line must say what the error contains"
    proc = run_cli("run", str(path.relative_to(ROOT)), "--run-dir", str(tmp_path / "r"))
    assert_user_error(proc, f"{path.name}:", first[len("# expect: ") :])
    assert not (tmp_path / "r").exists()  # nothing is written for a config the run never accepted
    assert "pwned" not in proc.stdout  # YAML tags never run code


# -- --set overrides ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "assignment,fragments",
    [
        pytest.param("train.seed", ["--set 'train.seed'", "expected key.path=value"], id="no-equals"),
        pytest.param("=3", ["--set '=3'", "empty key"], id="empty-key"),
        pytest.param("train..seed=1", ["--set 'train..seed=1'", "empty key in 'train..seed'"], id="double-dot"),
        pytest.param("train.seed.x=1", ["--set 'train.seed.x=1'", "'seed' is not a section"], id="into-a-number"),
        pytest.param("train.vib.kl_factr=1", ["unknown key 'train.vib.kl_factr'"], id="misspelt-key"),
        pytest.param("bench.batch_sizes=[1,", ["key 'bench.batch_sizes'"], id="unclosed-list"),
        pytest.param("name=", ["key 'name'"], id="empty-value"),
        pytest.param("train.dense.epochs=1.5", ["key 'train.dense.epochs'"], id="fractional-epochs"),
        pytest.param("train.batch_size=many", ["key 'train.batch_size'"], id="word-for-a-number"),
        pytest.param("model=lenet5", ["key 'model'"], id="string-for-a-section"),
        pytest.param("model.name=alexnet", ["key 'model.name'", "alexnet"], id="unknown-model"),
        pytest.param("export.opset=16", ["key 'export.opset'"], id="opset-out-of-range"),
        pytest.param(
            "deploy.target=tensorrt-fp32",
            ["deploy.target tensorrt-fp32@", "engine 'tensorrt' is not in bench.backends"],
            id="target-engine-not-benched",
        ),
        pytest.param("deploy.target=fastest", ["key 'deploy.target'", "fastest"], id="target-unknown"),
        pytest.param("deploy.max_error_increase=-0.1", ["key 'deploy.max_error_increase'"], id="negative-budget"),
        pytest.param(
            "train.vib.kl_weighting=latency",
            ["train.vib.kl_weighting: latency needs a named deploy.target", "not auto"],
            id="latency-weighting-on-auto-target",
        ),
    ],
)
def test_bad_set(assignment, fragments, tmp_path):
    proc = run_cli("run", PIPELINE, "--run-dir", str(tmp_path / "r"), "--set", assignment)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args,fragments",
    [
        pytest.param(["run", "pipelines"], ["pipeline file pipelines not found"], id="pipeline-is-a-folder"),
        pytest.param(
            ["run", "pipelines/mnist-lenet300.yml"], ["pipelines/mnist-lenet300.yml not found"], id="pipeline-typo"
        ),
        pytest.param(
            ["latency-table", "pipelines/mnist-lenet5.yaml"],
            ["kl_weighting: latency needs a named deploy.target"],
            id="latency-table-on-auto-target",
        ),
    ],
)
def test_bad_pipeline_path(args, fragments):
    assert_user_error(run_cli(*args), *fragments)


# -- dataset files --------------------------------------------------------------------------------------
FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _dataset(folder: Path, n_train: int = 30, n_test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels": rng.integers(0, 10, n_train),
        "test-images": rng.integers(0, 256, (n_test, 28, 28)),
        "test-labels": rng.integers(0, 10, n_test),
    }
    for key, array in arrays.items():
        (folder / FILES[key]).write_bytes(_idx(array))
    return folder


def _edit(key: str, change):
    def apply(folder: Path) -> None:
        path = folder / FILES[key]
        path.write_bytes(change(path.read_bytes()))

    return apply


def _replace_with_gz(key: str, make):
    def apply(folder: Path) -> None:
        raw = folder / FILES[key]
        (folder / (FILES[key] + ".gz")).write_bytes(make(raw.read_bytes()))
        raw.unlink()

    return apply


DATA_CASES = [
    pytest.param(
        _edit("train-images", lambda b: b"\x12\x34\x08\x03" + b[4:]),
        [],
        ["train-images-idx3-ubyte: not an IDX file (wrong magic number 12340803)"],
        id="wrong-magic",
    ),
    pytest.param(
        _edit("test-labels", lambda b: b"\x89PNG\r\n\x1a\n" + b[8:]),
        [],
        ["t10k-labels-idx1-ubyte: not an IDX file"],
        id="png-instead-of-labels",
    ),
    pytest.param(
        _edit("train-labels", lambda b: b""), [], ["train-labels-idx1-ubyte: not an IDX file", "empty"], id="empty-file"
    ),
    pytest.param(
        _edit("train-images", lambda b: b[:-100]),
        [],
        ["train-images-idx3-ubyte: truncated or padded", "23,520 bytes, file has 23,420"],
        id="truncated-images",
    ),
    pytest.param(
        _edit("test-images", lambda b: b + b"\0" * 7),
        [],
        ["t10k-images-idx3-ubyte: truncated or padded"],
        id="padded-images",
    ),
    pytest.param(
        _edit("train-labels", lambda b: b[:6]),
        [],
        ["train-labels-idx1-ubyte: truncated IDX header"],
        id="truncated-header",
    ),
    pytest.param(
        _edit("train-images", lambda b: b[:2] + b"\x0d" + b[3:]),
        [],
        ["train-images-idx3-ubyte: unsupported IDX type 0x0d"],
        id="float-idx",
    ),
    pytest.param(
        _edit("train-labels", lambda b: _idx(np.zeros(29))),
        [],
        ["train-images-idx3-ubyte has 30 images but", "train-labels-idx1-ubyte has 29 labels"],
        id="train-count-mismatch",
    ),
    pytest.param(
        _edit("test-labels", lambda b: _idx(np.zeros(11))),
        [],
        ["t10k-images-idx3-ubyte has 10 images but", "t10k-labels-idx1-ubyte has 11 labels"],
        id="test-count-mismatch",
    ),
    pytest.param(
        _edit("test-labels", lambda b: b[:-1] + b"\x0c"),
        [],
        ["t10k-labels-idx1-ubyte: label 12 out of range 0-9"],
        id="label-out-of-range",
    ),
    pytest.param(
        _edit("train-images", lambda b: _idx(np.zeros(30))),
        [],
        ["train-images-idx3-ubyte", "expected 3-dim images"],
        id="labels-as-images",
    ),
    pytest.param(
        _replace_with_gz("train-images", lambda b: b"definitely not gzip"),
        [],
        ["train-images-idx3-ubyte.gz: cannot read"],
        id="bad-gzip",
    ),
    pytest.param(
        _replace_with_gz("test-images", lambda b: gzip.compress(b)[:200]),
        [],
        ["t10k-images-idx3-ubyte.gz: cannot read"],
        id="truncated-gzip",
    ),
    pytest.param(
        lambda folder: (folder / FILES["test-labels"]).unlink(),
        [],
        ["data.root", "lacks t10k-labels-idx1-ubyte"],
        id="missing-file",
    ),
    pytest.param(
        lambda folder: None,
        ["--set", "data.val_size=30"],
        ["data.val_size=30 leaves no training images"],
        id="val-size-takes-everything",
    ),
]


def test_synthetic_dataset_is_valid(tmp_path):
    """The control: the dataset the cases below break loads cleanly, so each error comes from its break."""
    from vib_deploy.data.datasets import load_splits

    splits = load_splits("mnist", str(_dataset(tmp_path / "d")), 5, None, None)
    assert splits.x_train.shape == (25, 1, 28, 28) and splits.x_test.shape == (10, 1, 28, 28)


@pytest.mark.parametrize("break_it,extra,fragments", DATA_CASES)
def test_bad_dataset(break_it, extra, fragments, tmp_path):
    folder = _dataset(tmp_path / "data")
    break_it(folder)
    # no fallback to the real MNIST in the cache or $VIB_DEPLOY_DATA: the broken folder is the only dataset
    isolated = {"XDG_CACHE_HOME": str(tmp_path / "no-cache"), "VIB_DEPLOY_DATA": ""}
    proc = run_cli(
        "run",
        PIPELINE,
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        f"data.root={folder}",
        "--set",
        "data.val_size=5",
        *extra,
        env=isolated,
        timeout=300,
    )
    assert_user_error(proc, *fragments)


def test_corrupt_cache_names_the_file(tmp_path):
    _dataset(tmp_path / "cache" / "vib-deploy" / "data" / "mnist")  # not the real bytes: sha256 mismatch
    proc = run_cli(
        "run",
        PIPELINE,
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        "data.val_size=5",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "VIB_DEPLOY_DATA": ""},
    )
    assert_user_error(
        proc, "train-images-idx3-ubyte: sha256 mismatch (corrupt cache)", "vib-deploy data fetch mnist --force"
    )


# -- run directories ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(lenet300_run) -> Path:
    return lenet300_run[0]


def _relist(d: Path, name: str) -> None:
    """Make the manifest agree with the file again: the bytes are now what vib-deploy 'wrote'."""
    from vib_deploy.runs.directory import RunDir

    stage = json.loads((d / "manifest.json").read_text())["artifacts"][name]["stage"]
    RunDir(d).add_artifacts(stage, [name])


def _truncate(name: str, keep: float = 0.5):
    def apply(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return apply


def _flip_byte(name: str):
    def apply(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / name).write_bytes(bytes(data))

    return apply


def _listed(name: str, make):
    """Replace `name` with `make(old_bytes, d)` and list it in the manifest, so the loader itself meets it."""

    def apply(d: Path) -> None:
        (d / name).write_bytes(make((d / name).read_bytes(), d))
        _relist(d, name)

    return apply


def _torch_bytes(obj, d: Path) -> bytes:
    import torch

    torch.save(obj, d / "scratch.pt")
    data = (d / "scratch.pt").read_bytes()
    (d / "scratch.pt").unlink()
    return data


def _edit_payload(name: str, change):
    def make(old: bytes, d: Path) -> bytes:
        import torch

        payload = torch.load(d / name, map_location="cpu", weights_only=True)
        change(payload)
        return _torch_bytes(payload, d)

    return _listed(name, make)


def _garbage(old: bytes, d: Path) -> bytes:
    return np.random.default_rng(0).integers(0, 256, len(old), dtype=np.uint8).tobytes()


def _edit_manifest(change):
    def apply(d: Path) -> None:
        manifest = json.loads((d / "manifest.json").read_text())
        change(manifest)
        (d / "manifest.json").write_text(json.dumps(manifest))

    return apply


def _edit_config(old: str, new: str):
    def apply(d: Path) -> None:
        text = (d / "config.yaml").read_text()
        assert old in text
        (d / "config.yaml").write_text(text.replace(old, new, 1))

    return apply


def _write(name: str, data: bytes):
    return lambda d: (d / name).write_bytes(data)


DEEP = b"[" * 200_000 + b"]" * 200_000  # a JSON (and YAML) list 200,000 deep


def _first_layer_out(payload) -> None:
    linear = next(s for s in payload["layers"] if s["type"] == "linear")
    linear["out"] += 1


RUN_DIR_CASES = [
    # damaged after the fact: the manifest catches it before anything is loaded
    pytest.param(
        _truncate("dense.pt"),
        "verify",
        ["dense.pt is corrupt or was altered", "--force train-dense"],
        id="truncated-model-verify",
    ),
    pytest.param(
        _write("dense.onnx", b""),
        "verify",
        ["dense.onnx is corrupt or was altered", "(0 bytes"],
        id="empty-onnx-verify",
    ),
    pytest.param(
        _truncate("train-dense.ckpt"),
        "train-dense",
        ["train-dense.ckpt is corrupt or was altered"],
        id="truncated-dense-checkpoint",
    ),
    pytest.param(
        _flip_byte("train-vib.ckpt"),
        "train-vib",
        ["train-vib.ckpt is corrupt or was altered"],
        id="flipped-byte-vib-checkpoint",
    ),
    pytest.param(
        _flip_byte("vib.pt"),
        "prune",
        ["vib.pt is corrupt or was altered", "--force train-vib"],
        id="flipped-byte-vib-model",
    ),
    pytest.param(
        _truncate("pruned.onnx", 0.9), "bench", ["pruned.onnx is corrupt or was altered"], id="truncated-onnx-bench"
    ),
    pytest.param(
        _write("prune.json", b'{"kept_pixels": null}'),
        "export",
        ["prune.json is corrupt or was altered"],
        id="edited-json",
    ),
    pytest.param(lambda d: (d / "vib.pt").unlink(), "prune", ["vib.pt is missing"], id="missing-model"),
    # listed in the manifest, so the loaders themselves must reject them
    pytest.param(
        _listed("vib.pt", _garbage), "prune", ["vib.pt: not a loadable vib-deploy model"], id="garbage-model-torch-load"
    ),
    pytest.param(
        _listed("dense.pt", lambda old, d: old[: len(old) // 2]),
        "train-vib",
        ["dense.pt: not a loadable vib-deploy model"],
        id="truncated-model-torch-load",
    ),
    pytest.param(
        _listed("vib.pt", lambda old, d: _torch_bytes({"weights": [1, 2, 3]}, d)),
        "prune",
        ["vib.pt: not a vib-deploy model file"],
        id="torch-file-not-a-model",
    ),
    pytest.param(
        _edit_payload("vib.pt", _first_layer_out),
        "prune",
        ["vib.pt: weights do not match its architecture"],
        id="weights-do-not-match-layers",
    ),
    pytest.param(
        _edit_payload("vib.pt", lambda p: p["layers"].append({"type": "transformer"})),
        "prune",
        ["vib.pt: invalid layer spec"],
        id="unknown-layer-type",
    ),
    pytest.param(
        _listed("train-dense.ckpt", _garbage),
        "train-dense",
        ["train-dense.ckpt: not a loadable checkpoint"],
        id="garbage-checkpoint-torch-load",
    ),
    pytest.param(
        _listed("train-vib.ckpt", lambda old, d: _torch_bytes([1, 2, 3], d)),
        "train-vib",
        ["train-vib.ckpt: not a vib-deploy training checkpoint"],
        id="torch-file-not-a-checkpoint",
    ),
    pytest.param(
        _listed("dense.onnx", _garbage), "bench", ["dense.onnx: ONNX Runtime cannot load it"], id="garbage-onnx-listed"
    ),
    # the manifest and the config
    pytest.param(
        _write("manifest.json", b'{"artifacts": {'), "verify", ["manifest.json is corrupt"], id="manifest-not-json"
    ),
    pytest.param(
        _write("manifest.json", b"[]"),
        "report",
        ["manifest.json is not a vib-deploy manifest"],
        id="manifest-is-a-list",
    ),
    pytest.param(
        _edit_manifest(lambda m: m["artifacts"]["vib.pt"].pop("sha256")),
        "prune",
        ["manifest.json is corrupt", "vib.pt"],
        id="manifest-entry-without-sha256",
    ),
    pytest.param(
        _edit_manifest(lambda m: m["artifacts"].pop("vib.pt")),
        "prune",
        ["vib.pt is not listed in"],
        id="model-not-in-manifest",
    ),
    pytest.param(lambda d: (d / "config.yaml").unlink(), "prune", ["no config.yaml"], id="missing-config"),
    pytest.param(
        _edit_config("name: lenet300", "name: alexnet"),
        "prune",
        ["config.yaml: key 'model.name'"],
        id="config-unknown-model",
    ),
    pytest.param(_write("config.yaml", b"name: [\n"), "report", ["config.yaml: not valid YAML"], id="config-not-yaml"),
    # nested past Python's recursion limit, or an alias bomb: each still one line
    pytest.param(_write("manifest.json", DEEP), "verify", ["manifest.json is corrupt or altered"], id="manifest-deep"),
    pytest.param(
        _listed("prune.json", lambda old, d: DEEP),
        "export",
        ["prune.json is corrupt or altered: JSON nested too deep"],
        id="record-deep-listed",
    ),
    pytest.param(_write("config.yaml", b"name: " + DEEP), "report", ["YAML nested too deep"], id="config-deep"),
    pytest.param(
        _write("config.yaml", (CORPUS / "alias-bomb.yaml").read_bytes()),
        "report",
        ["over 100,000 values once its aliases are expanded"],
        id="config-alias-bomb",
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize("break_it,command,fragments", RUN_DIR_CASES)
def test_broken_run_directory(tiny_run, tmp_path, break_it, command, fragments):
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    break_it(d)
    assert_user_error(run_cli(command, str(d)), *fragments)
    assert not (d / ".lock").exists() and not list(d.glob(".*.tmp"))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(["train.vib.kl_factor=10", "train.vib.gate_lr=0.1", "train.vib.epochs=8"], id="kl-factor-huge"),
        pytest.param(["train.vib.threshold=-1000"], id="threshold-keeps-nothing"),
    ],
)
def test_pruning_that_deletes_a_whole_layer(tiny_run, tmp_path, settings):
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    args = [a for s in settings for a in ("--set", s)]
    proc = run_cli("run", PIPELINE, "--run-dir", str(d), *TINY, *args)
    assert_user_error(proc, "pruning would delete a whole layer: gate", "keeps no unit", "train.vib.kl_factor")
    assert "[cached] train-dense" in proc.stderr and "[run] prune" in proc.stderr
    # train-vib committed with the new settings; prune kept its old record and outputs, which verify says
    # no longer match the new vib.pt (the old ones still verify)
    proc = run_cli("verify", str(d))
    assert_user_error(proc, "stage prune is out of date (train-vib.json, vib.pt changed since it ran)")
    assert "corrupt" not in proc.stderr


# -- run directories that are not usable at all -------------------------------------------------------------
def test_run_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_user_error(run_cli("run", PIPELINE, "--run-dir", str(tmp_path / "f")), f"{tmp_path / 'f'}")
    assert_user_error(run_cli("init", PIPELINE, "--run-dir", str(tmp_path / "f" / "sub")), f"{tmp_path / 'f' / 'sub'}")


def test_stage_before_its_inputs(tmp_path):
    d = tmp_path / "r"
    assert run_cli("init", PIPELINE, "--run-dir", str(d)).returncode == 0
    assert_user_error(run_cli("prune", str(d)), "stage prune needs stage train-vib", str(d))


def test_not_a_run_directory(tmp_path):
    assert_user_error(run_cli("prune", str(tmp_path)), f"{tmp_path} is not a vib-deploy run directory (no config.yaml)")
    assert_user_error(run_cli("verify", str(tmp_path)), f"{tmp_path} has no manifest entries")


@pytest.mark.e2e
def test_a_batch_that_cannot_fit_is_refused_before_allocation(tiny_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    config = (d / "config.yaml").read_bytes()
    proc = run_cli("bench", str(d), "--batch", "200000000")
    assert_user_error(proc, "bench.batch_sizes (--batch): the input alone needs 627,200,000,000 bytes", "available")
    assert "MemoryError" not in proc.stderr and (d / "config.yaml").read_bytes() == config  # nothing changed


@pytest.mark.e2e
def test_a_hostile_manifest_entry_is_one_line(tiny_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["artifacts"]["../../../etc/hostname"] = manifest["artifacts"]["dense.onnx"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(run_cli("verify", str(d)), "'../../../etc/hostname', which is not a plain file name inside")
