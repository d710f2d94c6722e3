"""A model factory reference: `path/to/file.py:function` or `package.module:function`, imported and called.

Used where a pipeline's net is built (sources.py), where a module model file is rebuilt (nets.py),
and in the train stages' cache key (a changed model file retrains: `factory_digest`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vib_deploy.errors import UserError, first_line


def is_file_ref(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def resolve_factory(ref: str) -> Callable[..., Any]:
    """`path/to/file.py:function` or `package.module:function` -> the function; clear errors otherwise."""
    if ref.count(":") != 1 or not all(ref.split(":")):
        raise UserError(f"model.factory {ref!r}: expected 'path/to/file.py:function' or 'package.module:function'")
    module_part, func_name = ref.split(":")
    try:
        if is_file_ref(module_part):
            path = Path(module_part).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"model.factory {ref!r}: file {module_part} not found")
            name = "vib_deploy_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses/pickling inside the user's file look themselves up here
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except UserError:
        raise
    except Exception as e:  # the user's file: SyntaxError, ImportError, anything at import time
        raise UserError(
            f"model.factory {ref!r}: importing {module_part} failed: {type(e).__name__}: {first_line(e)}"
        ) from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"model.factory {ref!r}: {module_part} has no function {func_name!r}")
    return func


def build_net(ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory; it must return an nn.Module."""
    func = resolve_factory(ref)
    try:
        net = func(**kwargs)
    except Exception as e:
        raise UserError(f"model.factory {ref!r} raised {type(e).__name__}: {first_line(e)}") from e
    if not isinstance(net, nn.Module):
        raise UserError(f"model.factory {ref!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def factory_digest(ref: str) -> str | None:
    """sha256 of a file factory's source (so a changed model file retrains), None for package references."""
    module_part = ref.split(":")[0]
    if is_file_ref(module_part) and Path(module_part).is_file():
        return hashlib.sha256(Path(module_part).read_bytes()).hexdigest()
    return None
