"""Every YAML cnnlab reads from a user refuses aliases before building objects (a few hundred bytes of nested
aliases expanded to 3.9 GB), and its error line quotes at most a short excerpt of a bad value."""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.config import config_keys, load_config
from cnnlab.data.folders import read_dataset_file
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.runs import load_run_config
from cnnlab.yaml_input import load_yaml


def laughs(levels: int, name: str = "a") -> str:
    """The billion-laughs document: each level repeats the one before nine times."""
    lines = [f"{name}0: &{name}0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"{name}{i}: &{name}{i} [" + ", ".join([f"*{name}{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _one_short_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 300, text
    return text


@pytest.mark.parametrize("where", ["recipe", "classes.yaml", "run config", "--set"])
def test_an_alias_is_refused_at_once_wherever_yaml_comes_from(tmp_path, where):
    bomb = laughs(10)  # 9**10 strings if expanded
    start = time.perf_counter()
    if where == "recipe":
        (tmp_path / "r.yaml").write_text("train:\n  epochs: 1\n" + bomb)
        with pytest.raises(ConfigError) as e:
            load_config("fashion", str(tmp_path / "r.yaml"))
    elif where == "classes.yaml":
        (tmp_path / "classes.yaml").write_text("classes: [a, b]\n" + bomb)
        with pytest.raises(DataError) as e:
            read_dataset_file(tmp_path)
    elif where == "run config":
        (tmp_path / "config.yaml").write_text(bomb)
        with pytest.raises(CheckpointError) as e:
            load_run_config(tmp_path)
    else:
        with pytest.raises(ConfigError) as e:
            load_config("fashion", "seed-a", ["train.epochs=*a"])
    assert time.perf_counter() - start < 2
    assert "alias" in _one_short_line(e)


def test_a_long_bad_value_is_quoted_as_an_excerpt(tmp_path):
    (tmp_path / "classes.yaml").write_text("classes: [a, {b: " + "x" * 5000 + ", c: 1}]\n")
    with pytest.raises(DataError) as e:
        read_dataset_file(tmp_path)
    assert "class entry {'b': 'xxx" in _one_short_line(e) and "..." in str(e.value)


def test_anchors_without_aliases_still_read():
    assert load_yaml("lr: &base 0.1\nclasses: [a, b]\n") == {"lr": 0.1, "classes": ["a", "b"]}


_LEAVES = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.booleans(), st.none())
_TREES = st.recursive(
    _LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(tree=_TREES, shared=st.booleans())
def test_any_document_reads_as_written_or_is_refused_for_its_alias(tree, shared):
    """yaml.dump writes a shared object once with an anchor and then as aliases: that text is refused in
    one line, and every other document reads back exactly."""
    doc = {"a": [tree], "b": None}
    if shared:
        doc["b"] = doc["a"]  # the same list object: dumped as &id001 ... *id001
    text = yaml.safe_dump(doc)
    if "*id" in text:
        with pytest.raises(yaml.YAMLError, match="aliases"):
            load_yaml(text)
    else:
        assert load_yaml(text) == doc


@pytest.mark.parametrize("key", [k for k in config_keys() if k.startswith(("train.", "optim."))][:6])
def test_set_values_with_an_alias_are_one_line(key):
    with pytest.raises(ConfigError) as e:
        load_config("fashion", "seed-a", [f"{key}=[*x, *x]"])
    _one_short_line(e)
