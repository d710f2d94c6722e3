"""`vib-deploy verify models/`: every model folder's config against Triton's schema, every version's files against
its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs.directory import plain_name, read_json_file, sha256_file
from vib_deploy.triton.repository import (
    CONFIG,
    MODEL_FILE,
    VERSION_MANIFEST,
    check_config_matches,
    graph_io,
    parse_config,
    versions,
)


def verify_repository(repo: Path) -> list[str]:
    """Re-parse every config.pbtxt with Triton's schema and check every version's files against its manifest.

    Returns one line per checked version; raises a UserError naming the first file that changed.
    """
    repo = Path(repo)
    checked = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = model_dir / CONFIG
        if not config_path.is_file():
            raise UserError(f"{model_dir} has no {CONFIG}: not a Triton model folder")
        config = parse_config(config_path.read_text(), str(config_path))
        if config.name and config.name != model_dir.name:
            raise UserError(f"{config_path} names the model {config.name!r} but its folder is {model_dir.name!r}")
        numbers = versions(model_dir)
        if not numbers:
            raise UserError(f"{model_dir} has no version folders")
        manifests = {n: _read_manifest(model_dir / str(n) / VERSION_MANIFEST) for n in numbers}
        # config.pbtxt and labels.txt are shared by the versions: they must match the last-written version's record
        last = max(numbers, key=lambda n: (manifests[n].get("written_ns", 0), n))
        for number in numbers:
            vdir = model_dir / str(number)
            manifest = manifests[number]
            expected = dict(manifest["files"])
            if number == last:
                expected.update(manifest.get("model_files", {}))
            for rel in expected:  # a version's own files, or `../name` for the model's shared ones; before opening
                shared = rel.startswith("../")
                plain_name(rel[3:] if shared else rel, vdir / VERSION_MANIFEST, model_dir if shared else vdir)
            for rel, sha in sorted(expected.items()):
                path = shown = model_dir / rel[3:] if rel.startswith("../") else vdir / rel
                if not path.is_file():
                    raise UserError(f"{shown} is missing (listed in {vdir / VERSION_MANIFEST})")
                actual = sha256_file(path)
                if actual != sha:
                    raise UserError(
                        f"{shown} changed: sha256 {actual[:12]}… != manifest {sha[:12]}… in {vdir / VERSION_MANIFEST}"
                    )
            extra = sorted(
                p.name for p in vdir.iterdir() if p.name not in manifest["files"] and p.name != VERSION_MANIFEST
            )
            if extra:
                raise UserError(f"{vdir} holds files not in its manifest: {', '.join(extra)}")
            if MODEL_FILE in manifest["files"]:
                inputs, outputs = graph_io(vdir / MODEL_FILE)
                check_config_matches(config, inputs, outputs, str(config_path))
            checked.append(f"{model_dir.name}/{number}: {len(expected)} files match")
    if not checked:
        raise UserError(f"{repo} holds no models")
    return checked


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} is missing: this version was not written by `vib-deploy package`")
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise UserError(f"{path} is not a vib-deploy version manifest (no 'files')")
    return data
