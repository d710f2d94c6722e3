"""What every stage record shares: the version check, field-by-field JSON (de)coding, read and write.

A record is a frozen dataclass whose fields are its file's keys. `JsonRecord.to_json` spells them when
writing and `JsonRecord.from_json` reads them back; a field with a default is optional in the file (files
written before it existed read with the default), one without is required. Nested records are named in
`NESTED` (a record class, or `ListOf`/`DictOf` one); a field named `extra` keeps keys the record does not know.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir, atomic_write_json

RECORD_VERSION = 1
R = TypeVar("R", bound="JsonRecord")


def check_version(data: dict[str, Any], name: str) -> None:
    """Refuse a file written by a newer vib-deploy (one line naming it); version 0 is a file made before versions."""
    version = data.get("record_version", 0)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise UserError(
            f"{name} has record_version {version!r}; this vib-deploy reads up to {RECORD_VERSION}: upgrade it"
        )


@dataclass(frozen=True)
class ListOf:
    """A list of `item` records in a file."""

    item: Any

    def decode(self, value: list[Any]) -> list[Any]:
        return [decode(self.item, v) for v in value]


@dataclass(frozen=True)
class DictOf:
    """A name -> `item` record map in a file."""

    item: Any

    def decode(self, value: dict[str, Any]) -> dict[str, Any]:
        return {k: decode(self.item, v) for k, v in value.items()}


def decode(codec: Any, value: Any) -> Any:
    """`value` from JSON as `codec` (None: as it is) reads it; a None value stays None."""
    if codec is None or value is None:
        return value
    if isinstance(codec, (ListOf, DictOf)):
        return codec.decode(value)
    return codec.from_json(value)


def encode(value: Any) -> Any:
    """A field's value as JSON: records by their `to_json`, containers item by item."""
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_json()  # type: ignore[union-attr]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


class JsonRecord:
    """Mixin of a frozen dataclass record: its JSON by field, `read` from a run directory, `write` atomically."""

    FILE: ClassVar[str] = ""  # the run directory's file of a top-level record ("" for a nested one)
    NESTED: ClassVar[dict[str, Any]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # optional keys written only when set

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif not (value is None and f.name in self.OMIT_NONE):
                out[f.name] = encode(value)
        return out

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        name = cls.FILE or cls.__name__
        if not isinstance(data, dict):
            raise UserError(f"{name} is not a JSON object; rerun the stage that makes it with --force")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if "record_version" in known:
            check_version(data, name)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "extra":
                kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
            elif f.name == "record_version":
                kwargs[f.name] = data.get(f.name, 0)
            elif f.name in data:
                kwargs[f.name] = decode(cls.NESTED.get(f.name), data[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"{name} lacks {f.name!r}; rerun the stage that makes it with --force")
        return cls(**kwargs)

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def read(cls: type[R], run: RunDir) -> R:
        """The record of `run`'s file, sha256-verified against its manifest."""
        return cls.from_json(run.read_json(cls.FILE))

    @classmethod
    def read_if_made(cls: type[R], run: RunDir) -> R | None:
        """The record when its stage has written the file, else None (a run stopped early or a stage that is off)."""
        return cls.read(run) if run.view().has(cls.FILE) else None
