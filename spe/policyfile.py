"""Reading policy files (YAML) so that every error names the file, the line and the fix.

Shared by the dataset policies (spe.ingest.policy) and the disclosure rules (spe.sdc.rules);
each passes its own exception class.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

import yaml

from spe.errors import SPEError


class Located:
    """Builds errors that name the file and the line of a YAML node."""

    def __init__(self, path: Path, error: type[SPEError]) -> None:
        self.path = path
        self.error = error

    def where(self, node: yaml.Node | None) -> str:
        return f", line {node.start_mark.line + 1}" if node is not None else ""

    def fail(self, node: yaml.Node | None, message: str) -> SPEError:
        return self.error(f"{self.path}{self.where(node)}: {message}")


def suggest(word: str, options: Iterable[str], otherwise: str = "") -> str:
    """'; did you mean X?' for the closest option, else ``otherwise``."""
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else otherwise


def compose(
    path: Path, error: type[SPEError], what: str, empty_hint: str = ""
) -> tuple[Located, yaml.Node, str]:
    """Read and parse ``path`` into a YAML node tree (and its text); refuse a missing,
    unreadable, invalid or empty file with a sentence. ``what`` names the kind of file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"There is no {what} at {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"Cannot read the {what} {path}: {exc}.") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise error(f"{path}{line}: not valid YAML ({exc.problem}).") from None
    if root is None:
        raise error(f"{path}: the policy is empty{empty_hint}.")
    return Located(path, error), root, text


def pairs(loc: Located, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping; a key given twice is an error."""
    if not isinstance(node, yaml.MappingNode):
        raise loc.fail(node, f"{what} must be a mapping of names to values.")
    seen: set[str] = set()
    out = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise loc.fail(key_node, f"the keys of {what} must be plain names.")
        key = str(key_node.value)
        if key in seen:
            raise loc.fail(key_node, f"{key!r} is given twice in {what}; keep one.")
        seen.add(key)
        out.append((key, key_node, value_node))
    return out
