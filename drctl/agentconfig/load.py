"""Reading ``site-agent CONFIG.yml``: every YAML or validation problem becomes one
:class:`ConfigError` naming the file, the field path (and line when known) and what to do."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from drctl.agentconfig.base import ConfigError
from drctl.agentconfig.errors import validation_message
from drctl.agentconfig.model import AgentConfig, check_files
from drctl.yamlsafe import YamlError, check_graph, decode_utf8, read_file, yaml_error_line


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``path``. Every problem becomes one :class:`ConfigError`."""
    try:
        data = read_file(path)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(data, source=str(path))


def load_checked(path: str) -> AgentConfig:
    """``load_config`` and ``check_files``: what the agent checks before it starts, every problem
    one :class:`ConfigError` worded for the operator."""
    cfg = load_config(path)
    problems = check_files(cfg, path)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s) with referenced files\n  " + "\n  ".join(problems))
    return cfg


def parse_config(text: str | bytes, source: str = "<config>") -> AgentConfig:
    """Validate a configuration document. UTF-8 only; recursive aliases, alias bombs and absurd
    nesting are refused before anything walks the document (drctl.yamlsafe)."""
    try:
        if isinstance(text, bytes):
            text = decode_utf8(text, source)
        check_graph(yaml.compose(text, Loader=yaml.SafeLoader), source)
        doc = yaml.safe_load(text)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(exc, source)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top (scope:, name:, restapi:, ...)")
    try:
        return AgentConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, _line_index(text))) from None


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return yaml_error_line(exc, source)
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{source}:{where}: YAML syntax error: {problem}. Fix the indentation/quoting there."


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of the YAML document to its 1-based line (best effort)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = (*path, str(i))
                out[key] = item.start_mark.line + 1
                walk(item, key)

    if root is not None:
        walk(root, ())
    return out
