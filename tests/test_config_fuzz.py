"""Hypothesis-mutated pipeline mappings: `parse_config` returns a valid config or raises one UserError line that
names the key at fault (the mutated one), never any other exception; `--set` with random text likewise."""

from __future__ import annotations

import copy
import math
import re
import string
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, run_cli
from vib_deploy.config import PipelineConfig, config_to_yaml, load_config, parse_config
from vib_deploy.errors import UserError

SOURCE = "fuzz.yaml"
SHIPPED = ROOT / "pipelines" / "mnist-lenet300.yaml"
SPARSE = yaml.safe_load(SHIPPED.read_text())  # the shipped file: some keys left to their defaults
FULL = load_config(SHIPPED).model_dump(mode="json")  # every key spelled out
MESSAGE = re.compile(rf"^{re.escape(SOURCE)}: (unknown key|missing key|key) '([^']*)'")
REQUIRED = {"name", "model", "model.name"}

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)
JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["", "lenet300", "onnxruntime", "cpu", "mnist", "1e-3", "[1, 64]", "true"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=6,
)
OUT_OF_RANGE = st.sampled_from(
    [0, -1, -0.5, -1e-12, 1e-320, 10**30, 2**63, -(2**63), 1e308, math.inf, -math.inf, math.nan, 0.0, 1.5, 100, 999999]
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into dicts and lists (the root excluded)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        out.append(prefix + (key,))
        out += _paths(child, prefix + (key,))
    return out


FREE_FORM = {("model", "kwargs")}  # the factory's keyword arguments: any key is the user's


def _dicts(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every mapping with a fixed set of keys, the root included."""
    if not isinstance(node, dict) or prefix in FREE_FORM:
        return []
    return [prefix] + [p for k, v in node.items() for p in _dicts(v, prefix + (k,))]


def _schema_keys(parent: tuple) -> set[str]:
    """The keys the schema has under `parent` (FULL spells every one out): adding one of them is not an unknown key.
    Hypothesis also draws string literals of the code under test, so a sparse base does meet them (`model.kwargs`)."""
    try:
        node = _get(FULL, parent)
    except (KeyError, IndexError, TypeError):
        return set()
    return set(node) if isinstance(node, dict) else set()


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


@st.composite
def mutation(draw, tree: Any) -> tuple[str, tuple, Any]:
    """(op, path, new tree): one mutation of `tree` (which is left untouched)."""
    tree = copy.deepcopy(tree)
    op = draw(st.sampled_from(["drop", "add", "retype", "range"]))
    if op == "drop":
        path = draw(st.sampled_from([p for p in _paths(tree) if isinstance(_get(tree, p[:-1]), dict)]))
        del _get(tree, path[:-1])[path[-1]]
    elif op == "add":
        parent = draw(st.sampled_from(_dicts(tree)))
        node = _get(tree, parent)
        key = draw(KEYS.filter(lambda k: k not in node and k not in _schema_keys(parent)))
        node[key] = draw(JUNK)
        path = parent + (key,)
    else:
        numeric = [
            p for p in _paths(tree) if isinstance(_get(tree, p), (int, float)) and not isinstance(_get(tree, p), bool)
        ]
        candidates = numeric if op == "range" and numeric else _paths(tree)
        path = draw(st.sampled_from(candidates))
        _get(tree, path[:-1])[path[-1]] = draw(OUT_OF_RANGE if op == "range" else JUNK)
    return op, path, tree


def _outcome(tree: Any) -> PipelineConfig | str:
    """The config, or the UserError message; any other exception fails the test."""
    try:
        return parse_config(tree, SOURCE)
    except UserError as e:
        message = str(e)
        assert "\n" not in message, message
        return message


def _named_key(message: str) -> tuple[str, str]:
    m = MESSAGE.match(message)
    assert m, f"the error names no key: {message!r}"
    return m.group(1), m.group(2)


def _assert_valid(config: PipelineConfig) -> None:
    """An accepted config is one a run can keep: finite numbers, and its config.yaml reads back to itself."""
    dumped = config.model_dump(mode="json")
    numbers = [_get(dumped, p) for p in _paths(dumped) if isinstance(_get(dumped, p), float)]
    assert all(math.isfinite(x) for x in numbers), dumped
    again = load_config_text(config_to_yaml(config))
    assert again == config


def load_config_text(text: str) -> PipelineConfig:
    return parse_config(yaml.safe_load(text), "config.yaml")


@pytest.mark.parametrize("base", [SPARSE, FULL], ids=["shipped-file", "every-key"])
def test_bases_are_valid(base):
    _assert_valid(parse_config(copy.deepcopy(base), SOURCE))


@pytest.mark.parametrize("base", [SPARSE, FULL], ids=["shipped-file", "every-key"])
@FUZZ
@given(data=st.data())
def test_one_mutation_is_accepted_or_names_that_key(base, data):
    op, path, tree = data.draw(mutation(base))
    dotted = _dotted(path)
    result = _outcome(tree)
    event(f"{op}: {'accepted' if isinstance(result, PipelineConfig) else 'rejected'}")
    if isinstance(result, PipelineConfig):
        assert op != "add", f"unknown key {dotted} was accepted"
        assert not (op == "drop" and dotted in REQUIRED), f"required key {dotted} was dropped and accepted"
        _assert_valid(result)
        return
    kind, key = _named_key(result)
    if op == "add":
        assert (kind, key) == ("unknown key", dotted), result
    elif op == "drop":
        assert (kind, key) == ("missing key", dotted) and dotted in REQUIRED, result
    else:  # the value itself, something inside it, or the section whose cross-field check it broke
        assert key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."), result


@FUZZ
@given(data=st.data())
def test_several_mutations_are_accepted_or_name_a_key_of_the_tree(data):
    tree = copy.deepcopy(data.draw(st.sampled_from([SPARSE, FULL])))
    for _ in range(data.draw(st.integers(1, 4))):
        _, _, tree = data.draw(mutation(tree))
    result = _outcome(tree)
    if isinstance(result, PipelineConfig):
        _assert_valid(result)
        return
    kind, key = _named_key(result)
    path = tuple(key.split("."))
    paths = {_dotted(p) for p in _paths(tree)}
    if kind == "missing key":
        parent = _dotted(path[:-1])
        assert key not in paths and (parent == "" or parent in paths), result
    else:
        assert key in paths, result


@FUZZ
@given(
    tree=st.one_of(
        JUNK.filter(lambda t: not isinstance(t, dict)), st.dictionaries(st.text(max_size=8), JUNK, max_size=4)
    )
)
def test_any_yaml_value_at_the_top_is_handled(tree):
    result = _outcome(tree)
    if not isinstance(tree, dict):
        assert result == f"{SOURCE}: expected a mapping at the top level, got {type(tree).__name__}"
    elif isinstance(result, str):
        assert result.startswith(f"{SOURCE}: ") and "key '" in result


@FUZZ
@given(parent=st.sampled_from(_dicts(FULL)), key=st.text(max_size=6), value=JUNK)
def test_any_unknown_key_is_named_on_one_line(parent, key, value):
    tree = copy.deepcopy(FULL)
    node = _get(tree, parent)
    assume(key not in node)
    node[key] = value
    message = _outcome(tree)  # one line, even for a key with a newline in it
    assert message == f"{SOURCE}: unknown key {_dotted(parent + (key,))!r}"


@FUZZ
@given(
    assignment=st.one_of(
        st.text(max_size=30),
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(
                [_dotted(p) for p in _paths(FULL)] + ["train.seed.x", "bench.backends.0", "model", "a..b", ""]
            ),
            st.one_of(
                st.text(max_size=15),
                st.sampled_from(["", "[1,", "{a: 1}", "nan", "-inf", "1e400", "!!python/name:os.system", "~", "0x10"]),
            ),
        ),
    )
)
def test_random_set_is_accepted_or_one_line_user_error(assignment):
    try:
        config = load_config(SHIPPED, [assignment])
    except UserError as e:
        message = str(e)
        assert "\n" not in message, message
        assert message.startswith("--set ") or "key '" in message, message
    else:
        _assert_valid(config)


# -- the same through the CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate,fragment",
    [
        pytest.param(
            lambda t: t["bench"].update(batch_sizes=[1, {"eight": 8}]), "key 'bench.batch_sizes.1'", id="dict-in-a-list"
        ),
        pytest.param(
            lambda t: t["train"]["vib"].update(kl_factor=math.inf), "key 'train.vib.kl_factor'", id="infinite-kl-factor"
        ),
        pytest.param(lambda t: t["prune"].update(tolerance=math.nan), "key 'prune.tolerance'", id="nan-tolerance"),
        pytest.param(lambda t: t["train"]["dense"].update(epochs=-3), "key 'train.dense.epochs'", id="negative-epochs"),
        pytest.param(
            lambda t: t["train"]["vib"].update(finetune_epochs=t["train"]["vib"]["epochs"]),
            "key 'train.vib'",
            id="finetune-not-below-epochs",
        ),
    ],
)
def test_cli_names_the_key(tmp_path, mutate, fragment):
    tree = copy.deepcopy(FULL)
    mutate(tree)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree))
    proc = run_cli("run", str(path), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert fragment in proc.stderr and str(path) in proc.stderr


def test_add_never_draws_a_key_the_schema_has():
    """A sparse base leaves optional keys out; "add" must not draw one of them (found in a full xdist run, where
    Hypothesis drew the literal "kwargs" from the package: `model.kwargs: null` is a bad value, not an unknown key)."""
    assert "kwargs" not in SPARSE["model"] and "kwargs" in _schema_keys(("model",))
    assert {"dense", "vib", "finetune"} <= _schema_keys(("train",)) and _schema_keys(("no", "such")) == set()
