"""A search space: config keys and the values a study may give them, read from YAML (a recipe's `tune:`
section or a file of its own) or from `--param KEY=SPEC`, and checked before any trial starts.

    optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {choices: [64, 128, 256]}
    train.epochs: {low: 4, high: 20, step: 4}

On the command line the same as `--param optim.lr=1e-4..1e-2:log`, `--param train.batch_size=64,128,256`,
`--param train.epochs=4..20:step=4` (or a YAML mapping: `--param 'optim.lr={low: 1e-4, high: 1e-2}'`).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import config_keys, find_recipe, load_config, parse_override
from ..errors import ConfigError
from ..tasks import get_task
from ..yaml_input import load_yaml, yaml_problem

SPEC_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched key: a range (`low`..`high`, on a log scale or in steps) or a list of `choices`."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def suggest(self, trial: Any) -> Any:
        """The value of this key for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def holds(self, value: Any) -> bool:
        """Whether a trial could take `value` (the base recipe's, to try first)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.integer and value != int(value):
            return False
        return self.step is None or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def edges(self) -> list[Any]:
        """The values a trial could take at the edges of the space (every choice), to check before the study."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return ", ".join(map(str, self.choices))
        how = " (log)" if self.log else f" (step {self.step})" if self.step else ""
        return f"{self.low} .. {self.high}{how}"


def value_text(value: Any) -> str:
    """A value as `--set` reads it back."""
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    return value


def param(key: str, spec: Any, where: str) -> Param:
    """A Param from its YAML form; ConfigError (one line, naming `where`) for anything a study could not search."""
    where = f"{where}: {key}"
    if key not in config_keys():
        try:
            parse_override(f"{key}=0")  # raises with the house's "unknown key ... did you mean" line
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected {{low: A, high: B}} or {{choices: [...]}}, got {spec!r}")
    if unknown := sorted(set(spec) - SPEC_KEYS):
        raise ConfigError(f"{where}: unknown {', '.join(unknown)}; a range takes low, high, log, step; or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: choices stand alone (no low, high, log or step beside them)")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, e.g. {{choices: [relu, sigmoid]}}")
        return Param(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    log, step = spec.get("log", False), spec.get("step")
    step = None if step is None else _number(step, where, "step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if low == high:
        raise ConfigError(f"{where}: empty range ({low} .. {high}); widen it, or set the value with --set")
    if low > high:
        raise ConfigError(f"{where}: inverted range ({low} .. {high}); low must be below high")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must stay above 0 ({low} .. {high})")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: a range is either log or in steps, not both")
        if step <= 0 or step > high - low:
            raise ConfigError(f"{where}: step {step} must be above 0 and at most high - low ({high - low})")
    return Param(key, low, high, log, step)


def read_space(spec: Mapping[str, Any] | None, where: str) -> list[Param]:
    """The Params of a space mapping (a recipe's `tune:` section or a space file's contents)."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a search space maps config keys to ranges, got {type(spec).__name__}")
    return [param(str(k), v, where) for k, v in spec.items()]


def space_file(path: Path) -> list[Param]:
    """The space in a YAML file: the mapping itself, or a recipe's `tune:` section."""
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the search space ({yaml_problem(e)}); fix the YAML") from None
    if isinstance(data, Mapping) and "tune" in data:
        data = data["tune"]
    return read_space(data, str(path))


def recipe_space(task: str, recipe: str | None) -> list[Param]:
    """The `tune:` section of a recipe, if it has one."""
    if recipe is None:
        return []
    path = find_recipe(task, recipe)
    data = load_yaml(path.read_text())
    return read_space(data.get("tune") if isinstance(data, Mapping) else None, str(path))


def param_option(item: str) -> Param:
    """`KEY=SPEC` as `--param` takes it: `LOW..HIGH[:log|:step=S]`, `A,B,C` (choices) or a YAML mapping."""
    where = f"--param {item}"
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise ConfigError(f"{where}: expected KEY=LOW..HIGH, KEY=A,B,C or KEY={{low: .., high: ..}}")
    try:
        if text.startswith("{"):
            return param(key, load_yaml(text), where)
        if ".." in text:
            bounds, _, how = text.partition(":")
            low, _, high = bounds.partition("..")
            spec: dict[str, Any] = {"low": load_yaml(low), "high": load_yaml(high)}
            if how == "log":
                spec["log"] = True
            elif how.startswith("step="):
                spec["step"] = load_yaml(how.removeprefix("step="))
            elif how:
                raise ConfigError(f"{where}: unknown ':{how}'; write :log or :step=S after the range")
            return param(key, spec, where)
        return param(key, {"choices": [load_yaml(v) for v in text.split(",")]}, where)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: cannot read the value ({yaml_problem(e)})") from None


def check_space(space: Sequence[Param], task: str, base: str, overrides: Sequence[str], where: str) -> None:
    """Refuse, before any trial, a space that is empty, names a key twice, or whose edge values the config
    refuses (a type the key does not take, an option the chosen model would ignore)."""
    if not space:
        raise ConfigError(f"{where}: nothing to search; give --param KEY=SPEC, --space FILE or a recipe with tune:")
    keys = [p.key for p in space]
    if dup := next((k for k in keys if keys.count(k) > 1), None):
        raise ConfigError(f"{where}: {dup} is searched twice; keep one range for it")
    for p in space:
        for value in p.edges():
            try:
                cfg = load_config(task, base, [*overrides, f"{p.key}={value_text(value)}"])
                with warnings.catch_warnings():  # a folder task knows its classes once it reads the data
                    warnings.simplefilter("ignore")
                    get_task(cfg).build_model(cfg)  # a model refuses the options it would ignore
            except ConfigError as e:
                raise ConfigError(f"search space {p.key} = {value!r}: {str(e).split(': ', 1)[-1]}") from None
