"""YAML someone else wrote, read safely: PyYAML's safe loader (no tag runs code), then refused whole, as one error
naming the file, when nested deeper than `MAX_DEPTH` or larger than `MAX_VALUES` once its aliases are expanded.

A "billion laughs" file (an anchor of nine values, an anchor of nine aliases of it, and so on nine times) parses to
a few shared lists that stand for 9^9 values: pipeline validation and the stage cache keys would walk every one.
"""

from __future__ import annotations

from typing import Any

import yaml

from vib_deploy.errors import UserError, first_line

MAX_DEPTH = 100  # a pipeline file nests 4 deep
MAX_VALUES = 100_000  # keys, values and list items, with every alias counted where it is used


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` (from `source`, named in errors)."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({first_line(e)})") from e
    except RecursionError as e:  # PyYAML composes nested collections recursively
        raise UserError(f"{source}: not a pipeline file (YAML nested too deep)") from e
    stack, count = [(tree, 0)], 0
    while stack:  # iterative: a deep tree must not be walked by recursion either
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_VALUES:
            too = f"nested more than {MAX_DEPTH} deep" if depth > MAX_DEPTH else f"over {MAX_VALUES:,} values"
            raise UserError(f"{source}: not a pipeline file ({too} once its aliases are expanded)")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for kv in node.items() for v in kv]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return tree
