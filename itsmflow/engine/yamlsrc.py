"""YAML files with locations: every value can be traced back to its line and column.

Pack files (``pack.yaml``, ``raci.yaml``, ``sod.yaml``, policies) are loaded with PyYAML's safe loader
for the data, and composed into a node tree for the positions (``start_mark``), so every problem is
reported as ``file:line:column: message``. Duplicate mapping keys — which the loader would silently
merge — are reported too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import SourceIssue

Path_ = Sequence[Any]


class YamlSource:
    def __init__(self, text: str, display: str) -> None:
        self.display = display
        self.issues: list[SourceIssue] = []
        self.data: Any = None
        self._root: yaml.Node | None = None
        try:
            self._root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.issues.append(SourceIssue(display, mark.line + 1 if mark else None,
                                           mark.column + 1 if mark else None,
                                           f"not valid YAML: {exc.problem or exc}"))
        except yaml.YAMLError as exc:
            self.issues.append(SourceIssue(display, None, None, f"not valid YAML: {exc}"))
        if self._root is not None:
            self._check_duplicates(self._root)

    @classmethod
    def read(cls, path: Path, display: str) -> "YamlSource":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            src = cls("", display)
            src.issues.append(SourceIssue(display, None, None, f"cannot read file: {exc}"))
            return src
        return cls(text, display)

    @property
    def ok(self) -> bool:
        return not self.issues

    # -- locations --------------------------------------------------------------------------
    def _find(self, path: Path_) -> tuple[yaml.Node | None, yaml.Node | None]:
        """(key node, value node) of ``path``; the deepest node found when the path is partly missing."""
        node, key_node = self._root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if str(k.value) == str(part):
                        key_node, node = k, v
                        break
                else:
                    return key_node, node
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                key_node, node = None, node.value[part]
            else:
                return key_node, node
        return key_node, node

    def position(self, path: Path_, *, key: bool = False) -> tuple[int | None, int | None]:
        key_node, node = self._find(path)
        target = key_node if key and key_node is not None else node
        if target is None:
            return None, None
        return target.start_mark.line + 1, target.start_mark.column + 1

    def issue(self, path: Path_, message: str, *, key: bool = False) -> SourceIssue:
        line, col = self.position(path, key=key)
        return SourceIssue(self.display, line, col, message)

    def _check_duplicates(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                name = str(k.value)
                if name in seen:
                    self.issues.append(SourceIssue(self.display, k.start_mark.line + 1, k.start_mark.column + 1,
                                                   f"duplicate key {name!r}"))
                seen.add(name)
                self._check_duplicates(v)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._check_duplicates(item)


def schema_issues(src: YamlSource, schema: dict[str, Any], *, data: Any = None) -> list[SourceIssue]:
    """Validate ``src.data`` (or ``data``) against a JSON Schema (draft 2020-12), located in ``src``."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    value = src.data if data is None else data
    out = []
    for err in sorted(validator.iter_errors(value), key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path])):
        path = list(err.absolute_path)
        where = ".".join(str(p) for p in path) or "(top level)"
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = (err.schema.get("properties") or {}) if isinstance(err.schema, dict) else {}
            patterns = list((err.schema.get("patternProperties") or {}) if isinstance(err.schema, dict) else {})
            extra = [k for k in err.instance if k not in known and not any(re.search(p, str(k)) for p in patterns)]
            if extra:
                for k in extra:
                    out.append(src.issue(path + [k], f"{where}: unknown key {k!r} (allowed: "
                                                     f"{', '.join(sorted(known)) or 'none'})", key=True))
                continue
        message = err.message if len(err.message) <= 300 else err.message[:297] + "..."
        out.append(src.issue(path, f"{where}: {message}"))
    return out
