"""IDX reading: real files load; wrong magic, truncation and count mismatches are clear errors."""

import gzip

import numpy as np
import pytest

from vib_deploy.data.datasets import SPLIT_FILES, load_splits, read_idx, resolve_root
from vib_deploy.errors import UserError


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_dataset(folder, n_train=30, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images": rng.integers(0, 255, (n_train, 28, 28)),
        "train-labels": rng.integers(0, 10, n_train),
        "test-images": rng.integers(0, 255, (n_test, 28, 28)),
        "test-labels": rng.integers(0, 10, n_test),
    }
    for key, arr in arrays.items():
        name = SPLIT_FILES[key] + (".gz" if gz else "")
        data = _idx(arr)
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_roundtrip_raw_and_gz(tmp_path, gz):
    arrays = _write_dataset(tmp_path, gz=gz)
    splits = load_splits("mnist", str(tmp_path), val_size=5, train_limit=None, test_limit=None)
    assert splits.x_train.shape == (25, 1, 28, 28) and splits.x_val.shape == (5, 1, 28, 28)
    assert np.array_equal(splits.y_val, arrays["train-labels"][25:])
    assert splits.x_test.dtype == np.float32 and splits.x_test.max() <= 1.0
    assert np.allclose(splits.x_test[:, 0] * 255, arrays["test-images"])


def test_real_mnist_header(mnist_root):
    labels = read_idx(next(p for p in mnist_root.iterdir() if p.name.startswith("t10k-labels")))
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_wrong_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(UserError, match="wrong magic"):
        read_idx(p)


def test_truncated(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(_idx(np.zeros((4, 28, 28)))[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(p)


def test_bad_gzip(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match="cannot read"):
        read_idx(p)


def test_count_mismatch(tmp_path):
    _write_dataset(tmp_path)
    (tmp_path / SPLIT_FILES["train-labels"]).write_bytes(_idx(np.zeros(29)))
    with pytest.raises(UserError, match="30 images but .* 29 labels"):
        load_splits("mnist", str(tmp_path), 5, None, None)


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("VIB_DEPLOY_DATA", raising=False)
    with pytest.raises(UserError, match="vib-deploy data fetch mnist"):
        resolve_root("mnist", None)


def test_a_named_root_is_never_skipped(tmp_path, monkeypatch):
    (tmp_path / "cache" / "vib-deploy" / "data" / "mnist").mkdir(parents=True)
    _write_dataset(tmp_path / "cache" / "vib-deploy" / "data" / "mnist")  # a usable cache beside it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"data.root .*nowhere is not a folder"):
        resolve_root("mnist", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"data.root .*empty lacks train-images-idx3-ubyte, .* \(raw or .gz\)"):
        resolve_root("mnist", str(tmp_path / "empty"))


def test_env_var_resolution(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    _write_dataset(tmp_path / "mnist")
    monkeypatch.setenv("VIB_DEPLOY_DATA", str(tmp_path))
    assert resolve_root("mnist", None) == tmp_path / "mnist"


def test_val_size_too_large(tmp_path):
    _write_dataset(tmp_path)
    with pytest.raises(UserError, match="val_size=30"):
        load_splits("mnist", str(tmp_path), 30, None, None)
