"""Pipeline files (`pipelines/*.yaml`): the schema (schema.py: pydantic models, `extra=forbid`, errors naming the
key) and the files (files.py: safe YAML loading, `--set a.b=c` overrides, a run directory's resolved config)."""

from vib_deploy.config.files import (
    CONFIG_FILE,
    apply_override,
    config_to_yaml,
    load_config,
    parse_config,
    read_run_config,
)
from vib_deploy.config.schema import FinetuneConfig, PipelineConfig, Target

__all__ = [
    "CONFIG_FILE",
    "FinetuneConfig",
    "PipelineConfig",
    "Target",
    "apply_override",
    "config_to_yaml",
    "load_config",
    "parse_config",
    "read_run_config",
]
