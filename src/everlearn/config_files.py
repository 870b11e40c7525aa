"""Config files as plain data: YAML read strictly, ``key=value`` overrides applied.

Everything here works on the plain dicts and lists YAML gives, before any dataclass exists, so
it needs neither the sections (``config``) nor the registries; ``validation.load_config``
builds and checks the result.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml

from everlearn.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    """Set ``value`` at the dotted ``keys`` inside plain config data (lists by index)."""
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                expected = (f"expected an index below {len(node)}" if node else
                            f"the list is empty; set it whole, e.g. {'.'.join(keys[:depth])}=[...]")
                raise ConfigError(f"override {text!r}: {where}: {expected}")
            idx = int(key)
            if last:
                node[idx] = value
            else:
                if node[idx] is None or isinstance(node[idx], str):
                    node[idx] = _shorthand_for_path(keys[:depth + 1], node[idx])
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:  # a list when the next key is an index
                    node[key] = [] if keys[depth + 1].isdigit() else {}
                elif isinstance(node[key], str):
                    node[key] = _shorthand_for_path(keys[:depth + 1], node[key])
                node = node[key]
        else:
            raise ConfigError(f"override {text!r}: {where}: cannot index into {node!r}")


def _shorthand_for_path(keys: list[str], value: Any) -> Any:
    """Expand a string shorthand so an override can reach inside it (e.g. train.path)."""
    if value is None:
        return {}
    if keys and keys[0] == "strategies":
        return {"name": value}
    if keys == ["tracker"]:
        return {"backend": value}
    if keys == ["text_stream", "boundaries"]:
        return {"mode": value}
    return {"path": value}


def _normalize_top(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Accept `strategy:` (singular, string or list) as an alias of `strategies:`."""
    if "strategy" in data:
        if "strategies" in data:
            raise ConfigError(f"{source}: strategy: give either `strategy` or `strategies`, "
                              "not both")
        value = data.pop("strategy")
        data["strategies"] = value if isinstance(value, list) else [value]
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (YAML keeps the
    last silently: ``seed: 0`` then ``seed: 7`` would run seed 7 from a file that says 0)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own construct_mapping refuses it with its message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}, first at line {seen[key]}; keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (``yaml.safe_load``'s loader, duplicate keys refused); one-line
    errors on a bad file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{p}: {where}: invalid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_config_data(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                     base: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The plain data of a config (the YAML file, or a copy of ``base``) with the overrides
    applied, and the source name errors give (the file, or ``<preset>``)."""
    source = str(path) if path is not None else "<preset>"
    data = read_yaml(path) if path is not None else copy.deepcopy(base or {})
    data = _normalize_top(data, source)
    for text in overrides:
        try:
            keys, value = parse_override(text)
            if keys[0] == "strategy":
                keys[0] = "strategies"
                if len(keys) == 1:
                    value = value if isinstance(value, list) else [value]
            apply_override(data, keys, value, text)
        except ConfigError as exc:  # name the file the override applies to
            raise ConfigError(f"{source}: {exc}") from None
    return data, source
