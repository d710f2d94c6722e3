"""Files written whole or not at all (temp file, fsync, rename), their sha256, and the names a manifest may list."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError

_UMASK = os.umask(0)  # read once: the permissions a plain open() would give
os.umask(_UMASK)


def user_cache(*parts: str) -> Path:
    """A folder of the user cache: `$XDG_CACHE_HOME/vib-deploy/<parts>` (default `~/.cache/vib-deploy/...`)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("vib-deploy", *parts)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_bytes(path: Path) -> int:
    """The bytes of a model file; OpenVINO IR (`.xml`) with its weights (`.bin`)."""
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights is not None else 0)


def to_bytes(obj: Any) -> bytes:
    """torch.save into memory, so a writer knows the size before it touches the disk."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _disk_full_message(path: Path, size: int | None, written: int) -> str:
    free = shutil.disk_usage(path.parent).free
    need = f"{size:,} bytes needed" if size is not None else f"more than the {written:,} bytes written needed"
    return f"disk full while writing {path}: {need}, {free:,} bytes free on {path.parent}"


def atomic_write(path: Path, write: Callable[[Path], object], size: int | None = None) -> None:
    """Call `write(tmp_path)`, fsync the result and rename it onto `path`.

    The temp file lives in the same directory so the rename is atomic on POSIX file systems.
    A disk-full error becomes a UserError naming the file and how much was needed (`size` when the
    caller knows it, else at least what was written); the temp file is always removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise UserError(_disk_full_message(path, size, written)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# A directory that cannot be opened or fsynced here (Windows, some network and FUSE file systems): the rename is
# still atomic, only its durability across a power cut is not promised. Any other error (EIO...) is raised.
_FSYNC_DIR_UNSUPPORTED = {
    errno.EINVAL,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.EACCES,
    errno.EISDIR,
    errno.EPERM,
}


def fsync_dir(directory: Path) -> None:
    """fsync a directory after a rename into it, so the new entry survives a power cut where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def plain_name(name: object, listed_in: Path, base: Path, resolved_base: Path | None = None) -> str:
    """`name` as `listed_in` lists it, refused unless it names a file inside `base`.

    A relative path (`model.onnx`, `plots/latency.png`) with no `.`/`..` part, no backslash and no NUL, that
    does not leave `base` through a symlink. Checked before anything is opened (resolving a link reads the
    link, not its target), so a hostile manifest cannot make vib-deploy read or hash a file elsewhere.
    `resolved_base`: `base.resolve()`, for a caller checking many names.
    """
    bad = not isinstance(name, str) or any(c in name for c in ("\\", "\0")) or os.path.isabs(name)
    if not bad:
        parts = str(name).split("/")
        bad = any(p in ("", ".", "..") for p in parts)
    if not bad:
        bad = not (base / str(name)).resolve().is_relative_to(resolved_base or base.resolve())
    if bad:
        raise UserError(
            f"{listed_in} lists {name!r}, which is not a plain file name inside {base}; the manifest was edited "
            "or damaged: nothing was opened (delete the run directory or rerun with --force)"
        )
    return str(name)


def read_json_file(path: Path, hint: str = "") -> Any:
    """Parse a JSON file; undecodable bytes are one UserError naming the file (plus `hint`)."""
    return parse_json(Path(path).read_bytes(), path, hint)


def parse_json(data: str | bytes, path: Path | str, hint: str = "") -> Any:
    """JSON read from `path`: undecodable bytes, or nesting deeper than Python's parser recurses (a manifest of
    200,000 nested lists), are one UserError naming the file (plus `hint`)."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt or altered: not JSON ({e}){'; ' + hint if hint else ''}") from e
    except RecursionError as e:
        raise UserError(f"{path} is corrupt or altered: JSON nested too deep{'; ' + hint if hint else ''}") from e
