"""JSON sidecars: what an artifact was made from and for, in `<artifact>.json` beside it.

A TensorRT plan, an OpenVINO IR and an AOTInductor package each keep one; this module writes, reads and checks
them. A check compares named fields against this machine and fails with one UserError saying what differs and
what to do, before the artifact's own library ever loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs.files import parse_json


def sidecar_path(artifact: Path) -> Path:
    """`<artifact>.json`: model.plan -> model.plan.json, pruned.xml -> pruned.xml.json."""
    return Path(str(artifact) + ".json")


def write_sidecar(artifact: Path, record: Mapping[str, Any]) -> Path:
    """Write the artifact's sidecar atomically; returns its path."""
    from vib_deploy.runs.directory import atomic_write_json

    path = sidecar_path(artifact)
    atomic_write_json(path, dict(record))
    return path


def read_sidecar(artifact: Path, fix: str) -> dict[str, Any]:
    """The artifact's sidecar; a missing or unreadable one is a UserError ending with `fix` (how to remake it)."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise UserError(f"{artifact}: no sidecar {path.name}; {fix}")
    record = parse_json(path.read_bytes(), path, fix)
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a JSON object; {fix}")
    return record


def check_sidecar(
    artifact: Path, expected: Sequence[tuple[str, str, Any]], made: str, fix: str, missing_fix: str | None = None
) -> dict[str, Any]:
    """The sidecar, after checking each (field, what it is called, this machine's value) in `expected`.

    The first field that differs is one UserError: "<artifact> was <made> for <what> <theirs>, this is <what>
    <ours>; <fix>". `missing_fix` (default `fix`) says how to make an artifact whose sidecar is missing.
    """
    record = read_sidecar(artifact, missing_fix or fix)
    for key, what, here in expected:
        if record.get(key) != here:
            raise UserError(f"{artifact} was {made} for {what} {record.get(key)}, this is {what} {here}; {fix}")
    return record
