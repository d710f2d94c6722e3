"""Command-line helpers: comma-separated options (`--concurrency 1,4,16`, `--kl-factor 1e-5,3e-5`, `--seeds 0,1,2`):
one parser; `vib-deploy bench`'s options as config overrides."""

from __future__ import annotations

from typing import Any

from vib_deploy.errors import UserError


def comma_list(text: str, option: str, kind: type, example: str) -> list[Any]:
    """'1,4,16' -> [1, 4, 16] (`kind` int or float); anything unparsable is one UserError naming the option."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"{option} takes comma-separated {'integers' if kind is int else 'numbers'}, e.g. {example}; got {text!r}"
        ) from None


def int_list(text: str, option: str) -> tuple[int, ...]:
    values = tuple(comma_list(text, option, int, "16,64"))
    if not values:
        raise UserError(f"{option} needs at least one value")
    return values


def floats(text: str, option: str) -> list[float]:
    """'1e-6,3e-6' -> [1e-06, 3e-06], each >= 0."""
    values = comma_list(text, option, float, "1e-5,3e-5")
    if not values or any(v < 0 for v in values):
        raise UserError(f"{option} needs at least one number >= 0; got {text!r}")
    return values


def seeds(text: str) -> list[int]:
    seeds = comma_list(text, "--seeds", int, "0,1,2")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct integers; got {text!r}")
    return seeds


def bench_overrides(
    backends: str | None, precisions: str | None, batch_sizes: str | None, sets: list[str]
) -> list[str]:
    """`vib-deploy bench`'s options as `bench.*` overrides of the run's config (other sections belong to `run`)."""
    overrides = [
        f"bench.{key}=[{value}]"
        for key, value in (("backends", backends), ("precisions", precisions), ("batch_sizes", batch_sizes))
        if value is not None
    ]
    for assignment in sets:
        if not assignment.startswith("bench."):
            raise UserError(
                f"--set {assignment!r}: bench takes bench.* keys only (the other stages' keys belong to `run`)"
            )
        overrides.append(assignment)
    return overrides
