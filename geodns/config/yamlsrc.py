"""YAML loading that remembers where every value came from.

PyYAML's SafeLoader forgets line numbers once it builds Python objects; like
octoDNS we subclass it so every mapping and sequence carries the line of each
key and item. Duplicate keys are reported instead of silently overwritten.
libyaml's parser (CSafeLoader) is used when PyYAML has it: it keeps the marks
and parses a 1,000-mirror configuration about four times faster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode


class YMap(dict[str, Any]):
    """A mapping with `line` (of the mapping) and `lines[key]` (of each value)."""

    line: int
    lines: dict[str, int]
    key_lines: dict[str, int]
    duplicates: tuple[str, ...]  # keys written twice in this mapping


class YList(list[Any]):
    line: int
    lines: list[int]


class YAMLProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_yaml_map(self, node: MappingNode) -> Any:
        data = YMap()
        data.line = node.start_mark.line + 1
        data.lines = {}
        data.key_lines = {}
        yield data
        # Duplicates among the keys written here; keys merged in with `<<` may
        # be overridden, as YAML intends.
        seen: set[str] = set()
        dups: list[str] = []
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    dups.append(key_node.value)
                    self.duplicates.append((key_node.start_mark.line + 1, key_node.value))
                seen.add(key_node.value)
        data.duplicates = tuple(dups)
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                # `1: ...` or `yes: ...` — keys are names, keep them as text
                key = str(key_node.value)
            data[key] = self.construct_object(value_node, deep=True)
            data.lines[key] = value_node.start_mark.line + 1
            data.key_lines[key] = key_node.start_mark.line + 1

    def construct_yaml_seq(self, node: SequenceNode) -> Any:
        data = YList()
        data.line = node.start_mark.line + 1
        data.lines = [n.start_mark.line + 1 for n in node.value]
        yield data
        data.extend(self.construct_sequence(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


def load_yaml(path: Path) -> tuple[Any, list[tuple[int, str]]]:
    """Parse one file; see parse_yaml."""
    return parse_yaml(path.read_text(encoding="utf-8"))


def parse_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """Returns (document, [(line, problem)]) for duplicate keys; raises
    YAMLProblem for syntax errors, with the line the parser reports."""
    loader = _Loader(text)
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise YAMLProblem(line, f"YAML syntax: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise YAMLProblem(0, f"YAML: {e}") from e
    finally:
        loader.dispose()
    dups = [(line, f"duplicate key '{key}'") for line, key in loader.duplicates]
    return doc, dups
