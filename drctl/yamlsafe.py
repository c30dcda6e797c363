"""Loading YAML written by people (configuration, topology, policies) without surprises: only
``safe_load`` types, UTF-8 only, and no alias tricks. Every problem is one :class:`YamlError`
line naming the source and, when known, the line.

``yaml.safe_load`` alone accepts a recursive alias (``a: &a [*a]``: a self-containing list that
makes every later walk recurse forever) and an alias bomb (a few hundred bytes whose aliases
expand to billions of nodes for anything that walks the result). The node graph is checked
first: no node inside itself, at most ``max_nodes`` nodes once aliases are expanded, at most
``max_depth`` levels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_NODES = 100_000
MAX_DEPTH = 100


class YamlError(ValueError):
    """A YAML document we refuse; the message is one line, ready for an operator."""


def decode_utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save the file as UTF-8"
        ) from None


def yaml_error_line(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{source}: character {exc.character!r} at position {exc.position} is not allowed in YAML: remove it"
    where = f":{mark.line + 1}: column {mark.column + 1}" if mark is not None else ""
    text = " ".join(str(problem or exc).split())
    return f"{source}{where}: not valid YAML ({text}): fix the indentation/quoting there"


def check_graph(root: yaml.Node | None, source: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`YamlError` for a recursive alias, an expansion beyond ``max_nodes`` or a
    nesting beyond ``max_depth`` (the graph of shared nodes itself is linear in the text)."""
    if root is None:
        return
    count = 0
    on_path: set[int] = set()

    def walk(node: yaml.Node, depth: int) -> None:
        nonlocal count
        count += 1
        if count > max_nodes:
            raise YamlError(
                f"{source}:{node.start_mark.line + 1}: aliases expand to more than {max_nodes} values "
                "(an alias bomb?): write the values out or use fewer aliases"
            )
        if depth > max_depth:
            raise YamlError(f"{source}:{node.start_mark.line + 1}: nested deeper than {max_depth} levels")
        if isinstance(node, yaml.ScalarNode):
            return
        if id(node) in on_path:
            raise YamlError(
                f"{source}:{node.start_mark.line + 1}: recursive alias (an anchor used inside itself): remove it"
            )
        on_path.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                children += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        for child in children:
            walk(child, depth + 1)
        on_path.discard(id(node))

    walk(root, 0)


def compose(text: str | bytes, source: str) -> yaml.Node | None:
    """The checked node graph of ``text`` (for line numbers), or :class:`YamlError`."""
    if isinstance(text, bytes):
        text = decode_utf8(text, source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise YamlError(yaml_error_line(exc, source)) from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply to read") from None
    check_graph(root, source)
    return root


def load_yaml(text: str | bytes, source: str) -> Any:
    """``yaml.safe_load`` after the checks above. Raises :class:`YamlError` (one line)."""
    if isinstance(text, bytes):
        text = decode_utf8(text, source)
    compose(text, source)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise YamlError(yaml_error_line(exc, source)) from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply to read") from None


def read_file(path: str | Path, what: str = "configuration file") -> bytes:
    """The bytes of ``path``; a YamlError naming the file and why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise YamlError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
