"""Read a YAML document as plain data plus the line of every value.

Plans are data, never code: this builds values from PyYAML's node tree with the safe
resolver only, so no tag can construct an object. Two YAML 1.1 traps are closed here:

- booleans are only ``true``/``false`` (YAML 1.2): ``no``, ``yes``, ``on``, ``off`` stay
  strings, so ``country: no`` is "no", not False;
- floats follow YAML 1.2: ``1e-5`` and ``3E4`` are numbers, not strings.

Duplicate keys are an error (PyYAML silently keeps the last one). A file over
``MAX_BYTES`` is refused before parsing; nesting deeper than ``MAX_DEPTH`` or more than
``_MAX_NODES`` nodes stop the composer as it goes (one parse), so a hostile file can
exhaust neither the stack nor the CPU; a recursive alias is refused.

    >>> doc = read_yaml_text("a: 1e-5\\nb: no\\n", "x.yaml")
    >>> doc.data, doc.line_of(("b",))
    ({'a': 1e-05, 'b': 'no'}, 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple  # a path into the document: keys and list indexes


class _Resolver(yaml.resolver.BaseResolver):
    """The safe resolver with YAML 1.2 booleans and floats."""


# Copy SafeLoader's implicit resolvers, minus bool and float, then add 1.2 versions.
_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
              yaml.constructor.SafeConstructor, _Resolver):
    def __init__(self, stream: str):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _Resolver.__init__(self)


class YamlProblem(Exception):
    """Problems found while reading (syntax, duplicate keys): ``problems`` lists them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_MAX_NODES = 20_000  # composed nodes, and values built (aliases expand)
MAX_BYTES = 256 * 1024  # a plan is a few KiB
MAX_DEPTH = 32  # a plan nests about 5 levels


@dataclass
class YamlDoc:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    nodes_built: int = 0

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


class _Counted(_Loader):
    """A loader whose composer counts nodes and depth as it goes: a hostile file stops at
    MAX_NODES or MAX_DEPTH during the one parse, before it can cost time or stack."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth, self.composed = 0, 0

    def compose_node(self, parent, index):
        self.composed += 1
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else "?"
        if self.composed > _MAX_NODES:
            raise YamlProblem([f"line {line}: more than {_MAX_NODES} values; a plan is a few dozen"])
        if self.depth >= MAX_DEPTH and isinstance(event, yaml.CollectionStartEvent):
            raise YamlProblem([f"line {line}: nested more than {MAX_DEPTH} levels deep; "
                               "a plan is a few levels of plain keys and lists"])
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> tuple[yaml.Node | None, _Loader]:
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise YamlProblem([f"the file is larger than {MAX_BYTES // 1024} KiB; a plan is a few KiB of YAML"])
    try:
        loader = _Counted(text)  # the reader refuses control characters here already
        try:
            return loader.get_single_node(), loader
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise YamlProblem([f"YAML syntax error at {where}: {exc.problem}"]) from None
    except yaml.reader.ReaderError as exc:
        raise YamlProblem([f"character #x{exc.character:04x} at position {exc.position} is not allowed "
                           "in a plan (control characters are refused)"]) from None
    except yaml.YAMLError as exc:
        raise YamlProblem([f"YAML error: {exc}"]) from None


def read_yaml_text(text: str, source: str) -> YamlDoc:
    node, loader = _compose(text)
    if node is None:
        raise YamlProblem(["the file is empty; a plan is a mapping with name, student, data, compute, eval"])
    doc = YamlDoc(data=None)
    problems: list[str] = []
    doc.data = _build(node, (), doc, problems, loader)
    if problems:
        raise YamlProblem(problems)
    return doc


def read_yaml(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlProblem([f"no such file: {path}"]) from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise YamlProblem([f"cannot read {path} as UTF-8 text: {exc}"]) from None
    return read_yaml_text(text, str(path))


def _build(node: yaml.Node, path: Path_, doc: YamlDoc, problems: list[str], loader: _Loader,
           inside: frozenset = frozenset()) -> Any:
    if id(node) in inside:  # `&a [*a]`: an alias to a collection it is part of
        raise YamlProblem([f"line {node.start_mark.line + 1}: a recursive alias (a value that contains itself)"])
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        inside = inside | {id(node)}
    doc.lines[path] = node.start_mark.line + 1
    doc.nodes_built += 1
    if doc.nodes_built > _MAX_NODES:  # aliases can expand a small file exponentially
        raise YamlProblem([f"the document expands to more than {_MAX_NODES} values (alias bomb?)"])
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        problems.append(f"line {node.start_mark.line + 1}: tag {node.tag!r} is not allowed; plans are plain data")
        return None
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(f"line {key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported in plans")
                continue
            key = _build(key_node, path + ("<key>",), doc, problems, loader, inside)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(f"line {key_node.start_mark.line + 1}: a key must be a plain scalar")
                continue
            if key in out:
                where = ".".join(str(p) for p in path + (key,))
                problems.append(
                    f"{where} (line {key_node.start_mark.line + 1}): duplicate key {key!r}, "
                    f"first given on line {doc.lines.get(path + (key,), '?')}"
                )
                continue
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), doc, problems, loader, inside)
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
        doc.lines.pop(path + ("<key>",), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), doc, problems, loader, inside) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        problems.append(f"line {node.start_mark.line + 1}: {exc.problem}")
        return None
    except ValueError:  # an integer of more digits than Python converts (4300)
        problems.append(f"line {node.start_mark.line + 1}: a number of {len(node.value)} characters is not a plan value")
        return None
