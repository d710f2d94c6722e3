"""Run directories: atomic writes, the sha256 manifest, stage cache keys and the run lock.

Every artifact a stage writes goes through `atomic_write_*` (temp file in the same directory,
fsync, rename), so a run killed at any moment leaves the old file or the new one, never a partial
one. `manifest.json` records each artifact's sha256 and the stage that made it; readers call
`RunDir.verified(name)` before loading anything.

A stage writes its outputs into `.staging/<stage>/` and `RunDir.commit` moves them into place and replaces
the stage's record in one journaled step (`committing` in the manifest, rolled forward by the next lock
holder if a kill interrupts it). Until then the run directory keeps the stage's previous outputs and
record: a stage that fails or is killed leaves the last completed state valid and cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs.files import (  # noqa: F401 (re-exported: the run directory's writers)
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    plain_name,
    read_json_file,
    sha256_file,
)
from vib_deploy.runs.lock import hold

MANIFEST = "manifest.json"
STAGING = ".staging"  # uncommitted stage outputs: .staging/<stage>/<name>
JOURNAL = "committing"  # manifest key of a commit in progress
LOCK = ".lock"


def stage_key(section: Any, input_hashes: dict[str, str], version: str) -> str:
    """Cache key of a stage: hash of its config section, its inputs' sha256 and the package version."""
    blob = json.dumps({"config": section, "inputs": input_hashes, "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    sha256: str
    stage: str  # the stage that made it
    bytes: int


@dataclass(frozen=True)
class StageEntry:
    key: str  # the cache key it ran with
    outputs: tuple[str, ...]
    inputs: dict[str, str] | None  # input name -> sha256 (None: a record made before inputs were kept)


@dataclass(frozen=True)
class Manifest:
    """The manifest as readers see it: what each artifact is and which stages have run (`RunDir.view`)."""

    artifacts: dict[str, Artifact]
    stages: dict[str, StageEntry]

    def has(self, name: str) -> bool:
        """Artifact `name` is listed (it may still fail `RunDir.verified`)."""
        return name in self.artifacts

    def ran(self, stage: str) -> bool:
        return stage in self.stages

    def sha256(self, name: str) -> str:
        return self.artifacts[name].sha256


@dataclass(frozen=True)
class RunDir:
    """A run directory `runs/<name>/` and its manifest."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    # -- manifest -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest: {"artifacts": {name: {sha256, stage, bytes}}, "stages": {stage: {key, outputs}}}."""
        path = self.file(MANIFEST)
        if not path.exists():
            return {"artifacts": {}, "stages": {}}
        data = read_json_file(path, "delete the run directory or rerun with --force")
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
            raise UserError(f"{path} is not a vib-deploy manifest")
        data.setdefault("stages", {})
        journal = data.get(JOURNAL, {})
        listed = [*data["artifacts"], *(journal.get("artifacts", {}) if isinstance(journal, dict) else {})]
        for stage in data["stages"].values():
            listed += stage.get("outputs", []) if isinstance(stage, dict) else []
        root = self.path.resolve()
        for name in listed:  # before any of them is opened
            plain_name(name, path, self.path, root)
        for name, entry in data["artifacts"].items():
            if not isinstance(entry, dict) or not {"sha256", "stage", "bytes"} <= entry.keys():
                raise UserError(
                    f"{path} is corrupt (its entry for {name} lacks sha256/stage/bytes); "
                    "delete the run directory or rerun with --force"
                )
        return data

    def view(self) -> Manifest:
        """The manifest, typed (what readers outside this module use)."""
        data = self.manifest()
        artifacts = {n: Artifact(e["sha256"], e["stage"], e["bytes"]) for n, e in data["artifacts"].items()}
        stages = {s: StageEntry(e["key"], tuple(e["outputs"]), e.get("inputs")) for s, e in data["stages"].items()}
        return Manifest(artifacts, stages)

    def add_artifacts(self, stage: str, outputs: list[str]) -> None:
        """List files in the manifest with their sha256 and the stage that made them."""
        manifest = self.manifest()
        for name in outputs:
            p = self.file(name)
            manifest["artifacts"][name] = {"sha256": sha256_file(p), "stage": stage, "bytes": p.stat().st_size}
        atomic_write_json(self.file(MANIFEST), manifest)

    def write_artifact(self, stage: str, name: str, write: Callable[[Path], object], size: int | None = None) -> None:
        """`atomic_write` artifact `name` and list it, so that a kill at any moment leaves a file that verifies.

        The new file's sha256 is listed as `pending` before the rename and becomes `sha256` after it:
        between the two, the manifest accepts either the old bytes or the new ones (both complete).
        """

        def write_then_announce(tmp: Path) -> None:
            write(tmp)
            manifest = self.manifest()
            sha = sha256_file(tmp)
            entry = manifest["artifacts"].get(name) or {"sha256": sha, "stage": stage, "bytes": tmp.stat().st_size}
            manifest["artifacts"][name] = {**entry, "pending": sha}
            atomic_write_json(self.file(MANIFEST), manifest)

        atomic_write(self.file(name), write_then_announce, size)
        self.add_artifacts(stage, [name])

    def staged(self, stage: str, name: str) -> Path:
        """Where `stage` writes output `name` before `commit` moves it into place."""
        return self.path / STAGING / stage / name

    def commit(self, stage: str, key: str, outputs: list[str], inputs: dict[str, str] | None = None) -> None:
        """Move `stage`'s staged outputs into place and replace its record: old or new, never a mix.

        Outputs with no staged file are taken as they lie (already in place). The new sha256s and record go
        into the manifest as a journal first; only then are files renamed, so a kill at any point leaves the
        old state (journal not written) or a journal that the next lock holder rolls forward.
        """
        manifest = self.manifest()
        artifacts = {}
        for name in outputs:
            staged = self.staged(stage, name)
            p = staged if staged.exists() else self.file(name)
            artifacts[name] = {"sha256": sha256_file(p), "stage": stage, "bytes": p.stat().st_size}
        record: dict[str, Any] = {"key": key, "outputs": list(outputs)}
        if inputs is not None:
            record["inputs"] = dict(inputs)
        manifest[JOURNAL] = {"stage": stage, "record": record, "artifacts": artifacts}
        atomic_write_json(self.file(MANIFEST), manifest)
        self._roll_forward(manifest)

    def finish(self, stage: str, key: str, outputs: list[str]) -> None:
        """Record a finished stage whose outputs are already in place (see `commit`)."""
        self.commit(stage, key, outputs)

    def _roll_forward(self, manifest: dict[str, Any]) -> None:
        """Complete a journaled commit: rename what is still staged, then write the new record."""
        journal = manifest.pop(JOURNAL)
        stage = journal["stage"]
        for name in journal["artifacts"]:
            staged = self.staged(stage, name)
            if staged.exists():
                target = self.file(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                fsync_dir(target.parent)
        manifest["artifacts"].update(journal["artifacts"])
        manifest["stages"][stage] = journal["record"]
        atomic_write_json(self.file(MANIFEST), manifest)
        shutil.rmtree(self.path / STAGING / stage, ignore_errors=True)

    def verified(self, name: str) -> Path:
        """Path of artifact `name` after checking it exists and matches its manifest sha256."""
        path = self.file(name)
        manifest = self.manifest()
        entry = manifest["artifacts"].get(name)
        if not path.exists():
            raise UserError(f"{path} is missing; run the stage that makes it first")
        if entry is None:
            raise UserError(f"{path} is not listed in {self.file(MANIFEST)}; it was not written by vib-deploy")
        actual = sha256_file(path)
        committing = manifest.get(JOURNAL, {}).get("artifacts", {}).get(name, {}).get("sha256")
        if actual not in (entry["sha256"], entry.get("pending"), committing):
            raise UserError(
                f"{path} is corrupt or was altered: sha256 {actual[:12]}… != manifest {entry['sha256'][:12]}… "
                f"({path.stat().st_size:,} bytes, expected {entry['bytes']:,}); rerun its stage with --force {entry['stage']}"
            )
        return path

    def read_json(self, name: str) -> Any:
        """A verified JSON artifact; garbage that the manifest agrees with is still one clear error."""
        return read_json_file(self.verified(name), "rerun the stage that makes it with --force")

    def record_problems(self, recorded: list[str]) -> list[str]:
        """What the stage records of `recorded` stages (in run order) say is wrong, as short phrases.

        An output listed under such a stage with no record for it (checkpoints aside: they are resume state),
        and a record whose inputs' sha256 (kept since records hold them) no longer match the manifest.
        """
        manifest = self.manifest()
        problems = []
        orphans = sorted(
            {
                e["stage"]
                for n, e in manifest["artifacts"].items()
                if e["stage"] in recorded and e["stage"] not in manifest["stages"] and not n.endswith(".ckpt")
            }
        )
        problems += [f"stage {s} has outputs but no record" for s in orphans]
        for stage in recorded:
            entry = manifest["stages"].get(stage)
            changed = [
                name
                for name, sha in (entry or {}).get("inputs", {}).items()
                if not name.startswith("data:") and manifest["artifacts"].get(name, {}).get("sha256") != sha
            ]
            if changed:
                problems.append(f"stage {stage} is out of date ({', '.join(changed)} changed since it ran)")
        return problems

    def verify_all(self) -> list[str]:
        """Check every artifact in the manifest; returns the names checked, raises on the first bad one."""
        names = sorted(self.manifest()["artifacts"])
        for name in names:
            self.verified(name)
        return names

    def stage_is_current(self, stage: str, key: str) -> bool:
        """True when `stage` ran with this key and all its outputs still verify."""
        entry = self.manifest()["stages"].get(stage)
        if entry is None or entry["key"] != key:
            return False
        try:
            for name in entry["outputs"]:
                self.verified(name)
        except UserError:
            return False
        return True

    # -- lock -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock file (`runs/lock.py`: across hosts, with a heartbeat); a second writer gets a
        clear error naming the holder."""
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, no permission
            raise UserError(f"cannot use {self.path} as a run directory ({e.strerror})") from e
        try:
            with hold(self.file(LOCK), self.path):
                for tmp in self.path.rglob(".*.tmp"):  # left by a killed writer: only the lock holder writes here
                    tmp.unlink(missing_ok=True)
                manifest = self.manifest()
                if JOURNAL in manifest:  # a commit a kill interrupted: its files are complete, finish it
                    self._roll_forward(manifest)
                shutil.rmtree(self.path / STAGING, ignore_errors=True)  # outputs of a stage that never committed
                yield
        finally:
            if created:  # a run that failed before writing anything leaves no empty directory behind
                with contextlib.suppress(OSError):
                    self.path.rmdir()
