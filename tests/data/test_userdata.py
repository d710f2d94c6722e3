"""Your own data: image folders and .npz arrays -- layouts, the decode cache, normalisation on the training split
only, every bad-data case as one clear error, and both through every stage of the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.folderdata import WORDS, write_digit_folder
from vib_deploy.data import userdata
from vib_deploy.data.datasets import load_splits
from vib_deploy.errors import UserError


def _folder(root, sizes=None, classes=("cat", "dog"), n=6, mode="L"):
    sizes = sizes or {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = sizes.get((split, c, i), (8, 8))
                value = 40 * (classes.index(c) + 1) + i
                Image.new(mode, (w, h), value if mode == "L" else (value, 0, 255 - value)).save(
                    root / split / c / f"{i}.png"
                )
    return root


def load_folder(root, val_size=2, **kw):
    return load_splits("folder", str(root), val_size, None, None, **kw)


def test_folder_layout_classes_and_channels(tmp_path):
    s = load_folder(_folder(tmp_path / "d"))
    assert s.classes == ("cat", "dog") and s.x_train.shape == (10, 1, 8, 8) and s.x_test.shape == (12, 1, 8, 8)
    assert sorted(np.concatenate([s.y_train, s.y_val]).tolist()) == [0] * 6 + [1] * 6
    # grey images stored 40 + i (cat) and 80 + i (dog): the labels follow the folders
    values = np.concatenate([s.x_train, s.x_val])[:, 0, 0, 0] * 255
    labels = np.concatenate([s.y_train, s.y_val])
    base = np.where(labels == 0, 40, 80)
    assert ((values >= base - 1e-3) & (values < base + 6)).all()
    rgb = load_folder(tmp_path / "d", channels=3)
    assert rgb.x_train.shape == (10, 3, 8, 8) and np.allclose(rgb.x_train[:, 0], rgb.x_train[:, 2])


def test_mixed_grey_and_colour_become_colour(tmp_path):
    root = _folder(tmp_path / "d")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "train" / "cat" / "red.png")
    s = load_folder(root)
    assert s.x_train.shape[1] == 3


def test_a_val_folder_is_the_validation_split(tmp_path):
    root = _folder(tmp_path / "d")
    shutil.copytree(root / "test", root / "val")
    s = load_folder(root, val_size=1000)  # val_size is not used when val/ exists
    assert len(s.y_val) == 12 and len(s.y_train) == 12


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _folder(tmp_path / "d")
    first = load_folder(root)
    monkeypatch.setattr(userdata, "_decode", lambda *a: pytest.fail("decoded again"))
    second = load_folder(root)
    assert np.array_equal(first.x_train, second.x_train) and first.fingerprint == second.fingerprint
    Image.new("L", (8, 8), 1).save(root / "train" / "cat" / "new.png")  # a changed folder is decoded anew
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert load_folder(root).fingerprint != first.fingerprint


def test_normalisation_uses_the_training_split_only(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 100, (40, 3, 4, 4)).astype(np.uint8)
    x[30:] += 150  # the images that become validation are much brighter
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(40) % 2)
    np.savez(tmp_path / "test.npz", x=np.full((5, 3, 4, 4), 255, np.uint8), y=np.zeros(5, int))
    s = load_splits("arrays", str(tmp_path), 10, None, None, normalize=True)
    order = np.random.default_rng(0).permutation(40)  # the fixed shuffle before the validation carve
    train = x[order[:30]].astype(np.float64) / 255
    assert np.allclose(s.mean, train.mean(axis=(0, 2, 3))) and np.allclose(s.std, train.std(axis=(0, 2, 3)))
    assert np.allclose(s.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert s.x_test.mean() > 1  # test images were not used: they stay far from zero mean


@pytest.mark.parametrize(
    "breakit,fragment",
    [
        pytest.param(lambda r: shutil.rmtree(r / "train"), "no train/ folder", id="no-train"),
        pytest.param(
            lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()],
            "a class folder with no images",
            id="empty-class",
        ),
        pytest.param(
            lambda r: shutil.copytree(r / "test" / "dog", r / "test" / "bird"),
            "test/ has classes that train/ has not: bird",
            id="unknown-test-class",
        ),
        pytest.param(
            lambda r: (r / "train" / "cat" / "9.png").write_bytes(b"not a png"),
            "9.png: not a readable image",
            id="unreadable",
        ),
        pytest.param(
            lambda r: Image.new("L", (9, 7)).save(r / "train" / "dog" / "big.png"),
            "images of different sizes",
            id="mixed-sizes",
        ),
        pytest.param(lambda r: [shutil.rmtree(r / s) for s in ("train", "test")], "no train/ folder", id="empty-root"),
    ],
)
def test_bad_folders(tmp_path, breakit, fragment):
    root = _folder(tmp_path / "d")
    breakit(root)
    with pytest.raises(UserError, match=fragment):
        load_folder(root)


def test_mixed_sizes_are_fine_with_a_size(tmp_path):
    root = _folder(tmp_path / "d")
    Image.new("L", (9, 7)).save(root / "train" / "dog" / "big.png")
    assert load_folder(root, size=(6, 5)).x_train.shape[2:] == (6, 5)


@pytest.mark.parametrize(
    "train,fragment",
    [
        pytest.param(
            {"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 2, -1])},
            "label -1 out of range",
            id="negative-label",
        ),
        pytest.param({"x": np.zeros((4, 8, 8), np.uint8)}, "needs arrays x (images) and y (labels)", id="no-labels"),
        pytest.param(
            {"x": np.zeros((4, 2, 8, 8), np.uint8), "y": np.zeros(4, int)},
            "expected (N, H, W) or (N, C, H, W)",
            id="two-channels",
        ),
        pytest.param(
            {"x": np.full((4, 8, 8), 3.0), "y": np.zeros(4, int)}, "float images must lie in [0, 1]", id="float-range"
        ),
        pytest.param(
            {"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)},
            "y must be 4 integer labels",
            id="count-mismatch",
        ),
    ],
)
def test_bad_arrays(tmp_path, train, fragment):
    np.savez(tmp_path / "train.npz", **train)
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.zeros(2, int))
    with pytest.raises(
        UserError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        load_splits("arrays", str(tmp_path), 1, None, None)


def test_test_labels_beyond_the_training_classes(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 5]))
    with pytest.raises(UserError, match=r"test.npz: label 5 out of range 0-1"):
        load_splits("arrays", str(tmp_path), 1, None, None)


# -- through every stage ------------------------------------------------------------------------------------
FAST = [
    "--set",
    "train.dense.epochs=1",
    "--set",
    "train.vib.epochs=2",
    "--set",
    "train.vib.finetune_epochs=0",
    "--set",
    "bench.rounds=1",
    "--set",
    "bench.iters_per_round=1",
    "--set",
    "bench.warmup=0",
    "--set",
    "bench.batch_sizes=[1]",
    "--set",
    "bench.memory=false",
    "--set",
    "bench.backends=[onnxruntime]",
    "--set",
    "train.finetune.epochs=0",
]


@pytest.mark.e2e
def test_rgb_folder_through_every_stage(tmp_path, mnist_root, monkeypatch):
    root = write_digit_folder(tmp_path / "digits", n_train=120, n_test=40, classes=4)  # ResNet-20: few images
    run_dir = tmp_path / "run"
    proc = run_cli(
        "run",
        "pipelines/folder-example.yaml",
        "--run-dir",
        str(run_dir),
        "--set",
        f"data.root={root}",
        "--set",
        "data.val_size=20",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pre = metrics["preprocessing"]
    assert pre["classes"] == sorted(WORDS[:4]) and pre["input_shape"] == [3, 32, 32] and len(pre["mean"]) == 3
    import onnx

    meta = {p.key: p.value for p in onnx.load(run_dir / "pruned.onnx").metadata_props}
    assert json.loads(meta["vib_deploy.preprocessing"]) == pre
    assert onnx.load(run_dir / "dense.onnx").graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4
    assert run_cli("verify", str(run_dir)).returncode == 0
    proc = run_cli("package", str(run_dir), "--repo", str(tmp_path / "models"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = (tmp_path / "models" / "folder-example-pruned" / "labels.txt").read_text().split()
    assert labels == sorted(WORDS[:4])


@pytest.mark.e2e
def test_arrays_through_every_stage(tmp_path, mnist_root):
    from vib_deploy.data.datasets import load_splits as load

    mnist = load("mnist", None, 1, 600, 200)
    np.savez(
        tmp_path / "train.npz",
        x=(np.concatenate([mnist.x_train, mnist.x_val])[:, 0] * 255).round().astype(np.uint8),
        y=np.concatenate([mnist.y_train, mnist.y_val]),
    )
    np.savez(tmp_path / "test.npz", x=mnist.x_test[:, 0], y=mnist.y_test)  # float in [0, 1] works too
    run_dir = tmp_path / "run"
    proc = run_cli(
        "run",
        "pipelines/mnist-lenet300.yaml",
        "--run-dir",
        str(run_dir),
        "--set",
        "data.dataset=arrays",
        "--set",
        f"data.root={tmp_path}",
        "--set",
        "data.val_size=100",
        "--set",
        "data.normalize=true",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["preprocessing"]["classes"] == [str(i) for i in range(10)] and metrics["test_samples"] == 200
    assert metrics["pruned"]["error"] < 0.5


def _png_header_only(path, width, height):
    """A PNG that declares width x height grey pixels and holds a few rows: Pillow reads the size from its header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (width + 1) * 4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30_000, 12_000], ids=["bomb-error", "bomb-warning"])  # > 2x and > 1x Pillow's limit
def test_a_decompression_bomb_is_refused_naming_the_file_and_the_limit(tmp_path, side):
    root = _folder(tmp_path / "d")
    _png_header_only(root / "train" / "dog" / "bomb.png", side, side)
    with pytest.raises(UserError, match=r"bomb.png: refused, more than Pillow's limit of [\d,]+ pixels"):
        load_folder(root)


@pytest.mark.parametrize("name", ["cat\nfish", "cat\rfish", "tab\tbed", "bell\x07", " padded"])
def test_a_class_name_that_is_not_one_label_line_is_refused(tmp_path, name):
    root = _folder(tmp_path / "d")
    for split in ("train", "test"):
        shutil.copytree(root / split / "cat", root / split / name)
    with pytest.raises(UserError, match="a class folder name must be one line of printable text") as e:
        load_folder(root)
    assert repr(name) in str(e.value) and "\n" not in str(e.value)


def test_the_decode_cache_holds_no_pickles(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _folder(tmp_path / "d")
    load_folder(root)
    (cached,) = (tmp_path / "cache").rglob("*.npz")
    np.savez(cached, x_train=np.array([{"a": 1}], dtype=object))  # an object array: a pickle inside
    with pytest.raises(UserError, match="the decode cache is corrupt or altered .*allow_pickle.*; delete it"):
        load_folder(root)


def _npz_with_header(path, header_shape, data: bytes, dtype="|u1"):
    """An .npz whose x.npy declares `header_shape` of `dtype` and holds `data`; y is fine."""
    import io
    import zipfile

    header = {"descr": dtype, "fortran_order": False, "shape": tuple(header_shape)}
    x = io.BytesIO()
    np.lib.format.write_array_header_1_0(x, header)
    y = io.BytesIO()
    np.save(y, np.zeros(4, np.int64))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", x.getvalue() + data)
        z.writestr("y.npy", y.getvalue())


@pytest.mark.parametrize(
    "make,fragment",
    [
        pytest.param(
            lambda p: _npz_with_header(p, (10**6, 1000, 1000), b"\0" * 64),
            "train.npz: array x declares shape [1000000, 1000, 1000] (1,000,000,000,000 bytes) but holds 64",
            id="huge-declared-shape",
        ),
        pytest.param(
            lambda p: np.savez(p, x=np.array([{"rm": "-rf"}] * 4, dtype=object), y=np.zeros(4, int)),
            "train.npz: array x holds Python objects (a pickle)",
            id="object-array",
        ),
        pytest.param(
            lambda p: np.save(open(p, "wb"), np.zeros((4, 8, 8), np.uint8)),  # a .npy named .npz
            "train.npz: not a readable .npz file",
            id="npy-not-npz",
        ),
    ],
)
def test_hostile_arrays_are_refused_before_loading(tmp_path, make, fragment):
    make(tmp_path / "train.npz")
    np.savez(tmp_path / "test.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.zeros(2, int))
    with pytest.raises(UserError) as e:
        load_splits("arrays", str(tmp_path), 1, None, None)
    assert fragment in str(e.value)


@pytest.mark.parametrize("hostile", ["bomb", "newline"])
def test_hostile_folders_through_the_cli_are_one_line_and_write_nothing(tmp_path, hostile):
    from tests.conftest import assert_user_error, run_cli

    root = _folder(tmp_path / "d")
    if hostile == "bomb":  # 30000 x 30000 grey pixels declared
        _png_header_only(root / "train" / "dog" / "bomb.png", 30_000, 30_000)
        fragments = ["bomb.png: refused, more than Pillow's limit of"]
    else:
        for split in ("train", "test"):
            shutil.copytree(root / split / "cat", root / split / "cat\nfish")
        fragments = ["'cat\\nfish'", "one line of printable text"]
    run_dir = tmp_path / "run"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ["run", "pipelines/folder-example.yaml", "--run-dir", str(run_dir), "--set", f"data.root={root}"]
    assert_user_error(run_cli(*args, "--set", "data.val_size=2", env=env), *fragments)
    assert not run_dir.exists() and not list((tmp_path / "cache").rglob("*.npz"))  # no run, no decode cache
