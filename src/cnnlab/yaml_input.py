"""Reading YAML that a user wrote (recipes, classes.yaml, run configs, values of --set): safe types, no aliases,
and errors that quote at most a short excerpt."""

from __future__ import annotations

from typing import Any

import yaml


def yaml_problem(error: Exception) -> str:
    """A YAML or reading error in a few words: where and what, without the parser's excerpt."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return " ".join(str(error).split())[:120]


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (`*name`): a few hundred bytes of nested aliases expand to gigabytes while the
    objects are built, so an alias is refused before any of them is made."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            problem = f"aliases (*{excerpt(event.anchor, 20)}) are not read; write the value out"
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Every YAML cnnlab reads from a user (recipes, classes.yaml, run configs, values of --set): safe types
    only, and no aliases."""
    return yaml.load(text, Loader=_NoAliases)


def excerpt(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: an error line quotes at most this much of a bad value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
