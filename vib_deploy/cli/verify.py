"""`vib-deploy verify`: a run directory (artifacts + stage records) or a Triton model repository, against its manifests."""

from __future__ import annotations

from pathlib import Path

from vib_deploy.errors import UserError


def verify_path(path: Path) -> str:
    """The one-line verdict for `path`; anything wrong is a UserError naming it."""
    from vib_deploy.pipeline import verify_run
    from vib_deploy.triton.repository import is_model_repository
    from vib_deploy.triton.verify import verify_repository

    if not path.is_dir():
        raise UserError(f"run directory {path} not found")
    if is_model_repository(path):
        checked = verify_repository(path)
        return f"ok: {len(checked)} model versions in {path} match their manifests; every config.pbtxt parses with Triton's schema"
    names = verify_run(path)
    if not names:
        raise UserError(f"{path} has no manifest entries: nothing to verify")
    return f"ok: {len(names)} artifacts in {path} match manifest.json; every stage record is current"
