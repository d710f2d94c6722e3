"""Your own data: a folder of images per class, or arrays in .npz files.

    folder:  root/train/<class>/*.png|jpg|...   root/test/<class>/...   [root/val/<class>/...]
    arrays:  root/train.npz  root/test.npz  [root/val.npz]   each with  x: (N, H, W) or (N, C, H, W), y: (N,) ints

Class names are the train folder names, sorted (arrays: "0", "1", ...; or a `classes` array in train.npz).
A folder is decoded once with Pillow (converted to `channels`, resized to `size`) into a uint8 array file in
the user cache, keyed by the folder's file list, sizes and mtimes and those settings: the second run starts
at once. Images come back as (N, C, H, W) float32 in [0, 1]; the training images in a fixed shuffled order
(seed 0), so that `val_size` and `train_limit` take images of every class.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vib_deploy.errors import UserError, first_line
from vib_deploy.runs.directory import atomic_write, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")  # val is optional


@dataclass(frozen=True)
class Arrays:
    """Decoded splits: x (N, C, H, W) float32 in [0, 1], y (N,) int64; `val` None when carved from train."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]
    fingerprint: dict[str, str]  # what a stage's cache key holds for this data


def _shuffled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(y))
    return x[order], y[order]


# -- folders ----------------------------------------------------------------------------------------------
def _listing(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """split -> [(class, image path)], sorted; every bad layout is one clear error."""
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder")
    found: dict[str, list[tuple[str, Path]]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            if split != "val":
                raise UserError(f"data.root {root}: no {split}/ folder (expected {split}/<class>/<image files>)")
            continue
        classes = sorted(p for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"data.root {root}: {split}/ has no class folders (expected {split}/<class>/<image files>)")
        items = []
        for c in classes:
            if not c.name.isprintable() or c.name != c.name.strip():  # newline, tab, other control characters
                raise UserError(
                    f"{c.parent}/{c.name!r}: a class folder name must be one line of printable text (it becomes a line "
                    "of labels.txt); rename the folder"
                )
            images = sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UserError(f"{c}: a class folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            items += [(c.name, p) for p in images]
        found[split] = items
    return found


def _decode(path: Path, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # an image over Pillow's pixel limit is refused, not decoded with a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(
            f"{path}: refused, more than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?)"
        ) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({first_line(e)})") from e
    try:
        with img:
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if img.mode in ("1", "L", "I;16", "I", "F") else "RGB")
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({first_line(e)})") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)


def _stack(
    arrays: list[np.ndarray], items: list[tuple[str, Path]], classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    shapes = {a.shape[1:]: p for a, (_, p) in zip(arrays, items)}
    if len(shapes) > 1:
        (s1, p1), (s2, p2) = list(shapes.items())[:2]
        raise UserError(
            f"images of different sizes ({p1}: {s1[1]}x{s1[0]}, {p2}: {s2[1]}x{s2[0]}); set data.size: [H, W]"
        )
    return np.stack(arrays), np.array([classes.index(c) for c, _ in items], dtype=np.int64)


def load_folder(root: Path, channels: int | None, size: tuple[int, int] | None, cache: Path) -> Arrays:
    """Decode (or read back from `cache`) an image folder."""
    listing = _listing(root)
    classes = sorted({c for c, _ in listing["train"]})
    for split in ("val", "test"):
        unknown = sorted({c for c, _ in listing.get(split, [])} - set(classes))
        if unknown:
            raise UserError(f"data.root {root}: {split}/ has classes that train/ has not: {', '.join(unknown)}")
    stat = [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for items in listing.values()
        for _, p in items
    ]
    digest = hashlib.sha256(json.dumps([stat, channels, size]).encode()).hexdigest()
    path = cache / f"{digest[:32]}.npz"
    if not path.exists():
        images = {split: [_decode(p, channels, size) for _, p in items] for split, items in listing.items()}
        if channels is None and len({a.shape[0] for split in images.values() for a in split}) > 1:
            images = {
                k: [np.repeat(a, 3, 0) if a.shape[0] == 1 else a for a in v] for k, v in images.items()
            }  # grey + colour: colour
        decoded = {}
        for split, items in listing.items():
            decoded[f"x_{split}"], decoded[f"y_{split}"] = _stack(images[split], items, classes)
        shapes = {a.shape[1:] for k, a in decoded.items() if k.startswith("x_")}
        if len(shapes) > 1:
            raise UserError(
                f"data.root {root}: train, val and test images differ in size ({sorted(shapes)}); set data.size: [H, W]"
            )

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **decoded)

        atomic_write(path, write)
    try:
        with np.load(path, allow_pickle=False) as z:
            split = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:  # not an .npz, or object arrays (pickles): never what this module wrote
        raise UserError(f"{path}: the decode cache is corrupt or altered ({first_line(e)}); delete it") from e
    if not {"x_train", "y_train", "x_test", "y_test"} <= split.keys():
        raise UserError(f"{path}: the decode cache is corrupt or altered (arrays {sorted(split)}); delete it")

    def pair(name: str) -> tuple[np.ndarray, np.ndarray]:
        return split[f"x_{name}"].astype(np.float32) / 255.0, split[f"y_{name}"]

    val = pair("val") if "x_val" in split else None
    return Arrays(_shuffled(*pair("train")), val, pair("test"), tuple(classes), {"data:folder": digest})


# -- arrays -----------------------------------------------------------------------------------------------
def _check_npz_headers(path: Path) -> None:
    """Refuse, before any array is allocated, a member that holds Python objects (a pickle) or declares a shape its
    bytes do not fill (10^12 images in a few KB: numpy would allocate them first)."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = npy.read_magic(f)
                read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, _, dtype = read_header(f)
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                held = info.file_size - f.tell()
            name = info.filename.removesuffix(".npy")
            if dtype.hasobject:
                raise UserError(f"{path}: array {name} holds Python objects (a pickle); give numbers")
            if declared != held:
                raise UserError(
                    f"{path}: array {name} declares shape {list(shape)} ({declared:,} bytes) but holds {held:,}"
                )


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    try:
        _check_npz_headers(path)
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise UserError(
                    f"{path}: needs arrays x (images) and y (labels); it has {', '.join(z.files) or 'none'}"
                )
            x, y = z["x"], z["y"]
            names = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz file ({first_line(e)})") from e
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"{path}: x has shape {list(x.shape)}; expected (N, H, W) or (N, C, H, W) with C 1 or 3")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: y must be {len(x)} integer labels, got {y.dtype} of shape {list(y.shape)}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise UserError(
                f"{path}: float images must lie in [0, 1] (got {x.min():.3g}..{x.max():.3g}); or give uint8"
            )
    else:
        raise UserError(f"{path}: x has dtype {x.dtype}; expected uint8 (0-255) or float (0-1)")
    return x, y.astype(np.int64), names


def load_arrays(root: Path) -> Arrays:
    """train.npz / test.npz (and val.npz if present) from `root`."""
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder")
    files = {s: root / f"{s}.npz" for s in SPLITS if (root / f"{s}.npz").is_file()}
    for s in ("train", "test"):
        if s not in files:
            raise UserError(f"data.root {root}: no {s}.npz (arrays x: (N, [C,] H, W), y: (N,) labels)")
    loaded = {s: _read_npz(p) for s, p in files.items()}
    x_train, y_train, names = loaded["train"]
    classes = names or [str(i) for i in range(int(y_train.max()) + 1 if len(y_train) else 0)]
    for s, (x, y, _) in loaded.items():
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(
                f"{files[s]}: label {int(y.min() if y.min() < 0 else y.max())} out of range 0-{len(classes) - 1}"
            )
        if x.shape[1:] != x_train.shape[1:]:
            raise UserError(
                f"{files[s]}: images of shape {list(x.shape[1:])}, but train.npz has {list(x_train.shape[1:])}"
            )
    val = loaded["val"][:2] if "val" in loaded else None
    return Arrays(
        _shuffled(x_train, y_train),
        val,
        loaded["test"][:2],
        tuple(classes),
        {f"data:{s}.npz": sha256_file(p) for s, p in files.items()},
    )
