"""Write real MNIST digits as an image folder (root/{train,test}/<class>/*.png), every `rgb_every`-th one in colour.

    .venv/bin/python tests/folderdata.py runs/digits-folder      # the folder pipelines/folder-example.yaml reads

Class folders are named by word ("zero", "one", ...) so that sorted folder names are not the digits' order:
the labels must come from the folder names, not from anything else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digit_folder(
    root: Path, n_train: int = 600, n_test: int = 200, rgb_every: int = 3, classes: int = 10
) -> Path:
    from PIL import Image

    from vib_deploy.data.datasets import SPLIT_FILES, _find_split, read_idx, resolve_root

    mnist = resolve_root("mnist", None)
    tint = np.array([1.0, 0.6, 0.3])  # colour images: the digit in orange on black
    for split, stem, n in (("train", "train", n_train), ("test", "test", n_test)):
        images = read_idx(_find_split(mnist, SPLIT_FILES[f"{stem}-images"]))  # type: ignore[arg-type]
        labels = read_idx(_find_split(mnist, SPLIT_FILES[f"{stem}-labels"]))  # type: ignore[arg-type]
        keep = np.flatnonzero(labels < classes)[:n]
        for i in keep:
            folder = root / split / WORDS[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            if i % rgb_every == 0:
                rgb = (images[i][:, :, None] * tint).astype(np.uint8)
                Image.fromarray(rgb, "RGB").save(folder / f"{i:05d}.png")
            else:
                Image.fromarray(images[i], "L").save(folder / f"{i:05d}.png")
    return root


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits-folder")
    print(write_digit_folder(target))
