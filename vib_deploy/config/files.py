"""Pipeline files read and written: safe YAML loading, `--set a.b=c` overrides, validation errors as one line
naming the key, a run directory's resolved config (`config.yaml`), and the YAML a run writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vib_deploy.config.schema import PipelineConfig
from vib_deploy.config.yamlfile import load_yaml
from vib_deploy.errors import UserError

CONFIG_FILE = "config.yaml"  # a run directory's resolved config


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    if not first["loc"]:  # a check across sections (a model_validator): its message names the keys
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    key = ".".join(str(p) for p in first["loc"]) if first["loc"] else "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":  # repr: a key with a quote or newline in it still reads as one line
        return f"{source}: unknown key {key!r}"
    if kind == "missing":
        return f"{source}: missing key {key!r}"
    if kind == "model_source_missing":  # neither model.name nor model.factory
        return f"{source}: missing key '{key}.name' (a zoo model; or {key}.factory: 'path/to/net.py:build')"
    return f"{source}: key {key!r}: {first['msg']} (got {first.get('input')!r})"


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 2e-5, true, [1,64] work)."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected key.path=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: empty key in {dotted!r}")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: '{part}' is not a section")
        node = child
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "2e-5" (no dot) as a string; take the number people mean
        try:
            value = float(value)
        except ValueError:
            pass
    node[parts[-1]] = value


def parse_config(tree: Any, source: str) -> PipelineConfig:
    """Validate a raw mapping; every problem becomes one UserError line naming the key."""
    if not isinstance(tree, dict):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(tree).__name__}")
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise UserError(_describe(e, source)) from e


def read_run_config(run_dir: Path) -> PipelineConfig:
    """The resolved config a run directory was made with."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found")
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise UserError(
            f"{run_dir} is not a vib-deploy run directory (no {CONFIG_FILE}); start one with `vib-deploy run PIPELINE.yaml`"
        )
    return load_config(path)


def load_config(path: Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline file with safe YAML loading, apply `--set` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline file {path} not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file ({e})") from e
    tree = load_yaml(text, str(path))  # deep nesting and alias bombs are refused too
    if tree is None:
        raise UserError(f"{path}: the file is empty")
    if isinstance(tree, dict):
        for assignment in overrides or []:
            apply_override(tree, assignment)
    return parse_config(tree, str(path))


def config_to_yaml(config: PipelineConfig) -> str:
    """The resolved config as YAML (what a run directory keeps as config.yaml)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
