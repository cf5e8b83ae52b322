"""Checks of config values shared by every config dataclass (experiment.py, tuning.py, pretrain.py): types,
with YAML's gentle coercions, and a Literal field's choices; finite numbers; names that become folder names;
the size of a YAML document once its aliases are expanded. Every failure is a ConfigError that names the
key, the value and the fix.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
import unicodedata
from typing import Callable, Literal

import yaml

from medpeft.errors import ConfigError


def check_types(obj, prefix: str, key_of: Callable[[str], str] | None = None) -> None:
    """Check (and gently coerce: YAML reads `3e-4` as a string) the dataclass's field types; a Literal
    field takes one of its values. Errors name the key: prefix.field, or key_of(field) (e.g. a CLI flag)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        key = key_of(f.name) if key_of else f"{prefix}.{f.name}" if prefix else f.name
        kind, optional = field_kind(hint)
        if (value is None and optional) or dataclasses.is_dataclass(kind):
            continue
        if typing.get_origin(kind) is Literal:
            check_choice(value, typing.get_args(kind), key, f.metadata.get("help"))
        else:  # a generic (tuple[str, ...]) is checked as its container
            setattr(obj, f.name, coerce_value(value, typing.get_origin(kind) or kind, key))


def check_at_least(obj, prefix: str, low: int, *names: str) -> None:
    """Each named field of the dataclass is >= low (an unset one is skipped); the error names prefix.field and its value."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < low:
            raise ConfigError(f"{prefix}.{name} must be >= {low}, got {value}")


def field_kind(hint) -> tuple[object, bool]:
    """The type a field takes, and whether it may be None (medpeft's fields are X or X | None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def check_choice(value, choices: tuple, key: str, help_text: str | None = None) -> None:
    """`value` must be one of a Literal field's `choices`; the error lists them (and the field's help)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):  # True is no 1
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}"
                          + (f" ({help_text})" if help_text else ""))


def coerce_value(value, kind: type, key: str):
    if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            return finite(number, key)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})")


def finite(value: float, key: str) -> float:
    """`value`, unless it is NaN or infinite: training would fail on it, or result.json (JSON has no
    NaN or Infinity) would record it and be unreadable by other tools."""
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r} (YAML's .nan / .inf); set a number or "
                          "remove the key for its default")
    return value


def build_dataclass(cls, values: dict, prefix: str):
    """Build `cls` from a dict; an unknown key is an error that lists the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping of settings, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)}")
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix or 'run'} config: {err}") from None


def optional_block(cls, value, key: str):
    """An optional measurement's settings: true (the defaults), a mapping, or false / null (off)."""
    if value is True:
        return cls()
    if isinstance(value, dict):
        return build_dataclass(cls, value, key)
    if value is False or value is None or isinstance(value, cls):
        return value or None
    raise ConfigError(f"{key} must be true, false or a mapping of its settings ({', '.join(f.name for f in dataclasses.fields(cls))}), "
                      f"got {value!r}")


# A grid or task name becomes one folder name (runs/<grid>/) and the first part of each run folder's name
# (<task>.<model>.<method>.seed<N>.<hash8>); file systems allow 255 bytes per name, so 128 leaves the rest room.
NAME_MAX_BYTES = 128


def check_name(name, key: str) -> str:
    """`name` if it is safe as one folder name under the runs folder: no path separators, no `..`, no
    control characters, not empty, at most NAME_MAX_BYTES bytes in UTF-8."""
    if not isinstance(name, str):
        raise ConfigError(f"{key} must be a string (it names a folder), got {name!r}; quote it in YAML: {key.split('.')[-1]}: '{name}'")
    problem = name_problem(name)
    if problem:
        shown = repr(name) if len(name) <= 60 else repr(name[:60]) + "..."
        raise ConfigError(f"{key} {shown} cannot name a folder under the runs folder: {problem}. Use letters, digits, "
                          "'-', '_' and '.', e.g. my-notes")
    return name


def name_problem(name: str) -> str | None:
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\'), so it would write into another folder"
    if ".." in name:
        return "it contains '..', which names the folder above"
    if name.startswith("."):
        return "it starts with '.', which makes a hidden folder"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "it contains a control character"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NAME_MAX_BYTES:
        return f"it is {size} bytes long in UTF-8, over the limit of {NAME_MAX_BYTES} (file names stop at 255 bytes)"
    return None


# Nodes of a YAML document with every alias expanded (what copying it, e.g. through JSON, builds).
# A large grid has a few hundred; an alias bomb of a few hundred bytes has hundreds of millions.
YAML_MAX_NODES = 100_000


def load_yaml(text: str, source: str):
    """Parse YAML safely, and refuse a document whose aliases expand past YAML_MAX_NODES nodes or refer
    to themselves, before anything copies it."""
    try:
        data = yaml.safe_load(text)
        nodes = expanded_size(data, {}, set(), source)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to read") from None
    if nodes > YAML_MAX_NODES:
        raise ConfigError(f"{source}: the YAML expands to more than {YAML_MAX_NODES:,} values once its aliases (*name) are "
                          "resolved (counting stopped there); a grid needs a few hundred: write the values out, or use fewer "
                          "nested aliases")
    return data


def expanded_size(node, sizes: dict, open_: set, source: str) -> int:
    """How many values `node` holds with shared (aliased) parts counted once per use; each shared part is
    counted only once, so this takes time linear in the parsed document, not in its expansion."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ConfigError(f"{source}: a YAML alias refers to a value that contains it (a cycle); write the values out")
    open_.add(id(node))
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    total = 1
    for child in children:
        total += expanded_size(child, sizes, open_, source)
        if total > YAML_MAX_NODES:  # no need to count further
            break
    open_.discard(id(node))
    sizes[id(node)] = total
    return total
