"""search.json (`vib-deploy search`): the candidates of one cost-target search and the one chosen to ship.

Not a stage file: a search folder holds it beside search.md and search.png, and `package` reads it to ship the
chosen candidate's run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.records.base import RECORD_VERSION, JsonRecord
from vib_deploy.runs.files import read_json_file


@dataclass(frozen=True)
class SearchRecord(JsonRecord):
    """The search: pipeline name, target kind (flops | speedup), one row per candidate, the chosen run directory."""

    FILE = "search.json"
    name: str
    kind: str
    dense_run: str  # the one dense stage every candidate copied
    budget: float | None  # validation error ceiling (dense fp32 + deploy.max_error_increase)
    candidates: list[dict[str, Any]]
    chosen: str | None  # run directory of the fastest candidate within the budget (None: none is)
    why_none: str | None = None
    record_version: int = RECORD_VERSION

    @classmethod
    def read_folder(cls, folder: Path) -> SearchRecord:
        """The search.json of a search folder."""
        return cls.from_json(read_json_file(Path(folder) / cls.FILE, "rerun `vib-deploy search`"))


def is_search(folder: Path) -> bool:
    return (Path(folder) / SearchRecord.FILE).is_file()


def chosen_run(folder: Path) -> Path:
    """The run directory a search chose (a user error when no candidate was within the budget)."""
    record = SearchRecord.read_folder(folder)
    if record.chosen is None:
        raise UserError(f"{folder}: the search chose no candidate ({record.why_none}); nothing to ship")
    return Path(record.chosen)
