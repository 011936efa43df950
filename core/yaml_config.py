"""Reading a YAML config: sections flattened, the line of every key remembered, duplicates
and malformed files reported with the file and line.

A config is untrusted input, so reading one is bounded: the file's size
(:data:`MAX_CONFIG_BYTES`), its nesting (:data:`MAX_DEPTH`) and the number of values it
stands for once every alias is expanded (:data:`MAX_VALUES`) are counted while the file is
composed, before anything is built, so a few lines of anchors and aliases ("billion laughs")
or an alias to its own anchor are refused in milliseconds instead of expanding to gigabytes
when the config is copied, hashed or saved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .flags import describe_value, normalise_name, section_names
from .options import ALIASES


class YamlOptions(dict):
    """A YAML config's option: value pairs, sections flattened; ``lines[option]`` is the
    1-based line each was set on."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.lines: dict[Any, int] = {}


class _LinedDict(dict):
    """A YAML mapping with the 1-based line of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}


# A config is a few hundred values at most; these bounds are orders of magnitude above any real one.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000


class _TooBig(Exception):
    def __init__(self, problem: str, line: int | None):
        super().__init__(problem)
        self.problem, self.line = problem, line


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader whose mappings remember the line of each key (``.lines``) and refuse
        a key given twice (YAML itself would keep the last one silently); composing counts
        the nesting depth and the expanded number of values (:func:`_bounded_compose`)."""

        def __init__(self, stream):
            super().__init__(stream)
            self._depth = 0
            self._weights: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

        compose_node = _bounded_compose

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

        def construct_lined_map(self, node):
            data = _LinedDict()
            yield data
            data.update(self.construct_mapping(node))
            data.lines = {self.construct_object(k): k.start_mark.line + 1
                          for k, _ in node.value if isinstance(k, yaml.ScalarNode)}

    Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_lined_map)
    return Loader


def _bounded_compose(self, parent, index):
    """``Composer.compose_node``, bounded: a node deeper than :data:`MAX_DEPTH`, an alias to
    an anchor that is still open (a structure containing itself), or a document standing for
    more than :data:`MAX_VALUES` values once aliases are expanded is refused where it is.
    Each node's expanded size is the sum of its children's, known when it is composed, so
    the check costs one addition per node or alias, never an expansion."""
    import yaml

    alias = self.check_event(yaml.AliasEvent)
    mark = self.peek_event().start_mark
    line = mark.line + 1 if mark is not None else None
    self._depth += 1
    try:
        if self._depth > MAX_DEPTH:
            raise _TooBig(f"is nested more than {MAX_DEPTH} levels deep", line)
        node = yaml.composer.Composer.compose_node(self, parent, index)
    finally:
        self._depth -= 1
    weights = self._weights
    if alias:
        weight = weights.get(id(node))
        if weight is None:
            raise _TooBig("has an alias inside its own anchor (a structure that contains itself)", line)
        return node  # its weight is added by the parent, like any child's
    if isinstance(node, yaml.MappingNode):
        weight = 1 + sum(weights[id(k)] + weights[id(v)] for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        weight = 1 + sum(weights[id(item)] for item in node.value)
    else:
        weight = 1
    if weight > MAX_VALUES:
        raise _TooBig(f"stands for more than {MAX_VALUES:,} values once its aliases are expanded "
                      "(anchors and aliases nested inside each other); a config has a few hundred", line)
    weights[id(node)] = weight
    return node


def _yaml_error(path: Path, exc) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None)
    text = ", ".join(p for p in (getattr(exc, "context", None), problem) if p) if problem else str(exc)
    return ConfigError(f"{where}: not valid YAML: {' '.join(text.split())}")


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size / 2**20:.1f} MiB"
    except OSError:
        return "the file"


def load_yaml(path: str | os.PathLike) -> YamlOptions:
    """A YAML config as option: value, with ``model:``/``data:``/``run:``/``training:``
    sections flattened. Every error names the file and the line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    with open(p, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {_size(p)} is too big for a config (at most {MAX_CONFIG_BYTES // 2**20} MiB); "
                          "is it a dataset? pass that with --dataset")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}, line {line}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(f"{p}, line {dup.again}: {dup.key} is set twice (first on line {dup.first}); "
                          "keep one") from None
    except _TooBig as big:
        where = f"{p}, line {big.line}" if big.line is not None else str(p)
        raise ConfigError(f"{where}: the YAML {big.problem}; refused as a config") from None
    except yaml.YAMLError as exc:
        raise _yaml_error(p, exc) from None
    except RecursionError:  # a bound above should come first; never a traceback
        raise ConfigError(f"{p}: the YAML is nested too deeply; refused as a config") from None
    if data is None:
        data = _LinedDict()
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of option: value")
    flat = YamlOptions(str(p))
    names: dict[str, Any] = {}
    sections = section_names()

    def add(key: Any, value: Any, line: int | None) -> None:
        name = ALIASES.get(normalise_name(str(key)), normalise_name(str(key)))
        if name in names:  # `lora_r` twice across sections, or `lora-r` and `lora_r`
            first = names[name]
            raise ConfigError(f"{p}, line {line}: {key} is set twice (first on line {flat.lines.get(first)} "
                              f"as {first}); keep one")
        names[name] = key
        flat[key] = value
        flat.lines[key] = line

    for key, value in data.items():
        line = data.lines.get(key)
        if key in sections:
            if value is None:  # an empty `model:` section
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{p}, line {line}: {key}: expected a section of option: value lines "
                                  f"indented under it, got {describe_value(value)}")
            for inner, inner_value in value.items():
                add(inner, inner_value, value.lines.get(inner))
        else:
            add(key, value, line)
    return flat
