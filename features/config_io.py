"""Typed configuration: the one loader of YAML files, ``--set`` overrides and ``config.json``.

A config section is a frozen dataclass that checks its own values in ``__post_init__``, so a
config that exists is valid. :func:`load` reads a YAML file, a JSON file or a run folder's
``config.json`` (JSON is YAML), applies dotted ``key.sub=value`` overrides (values parsed as
YAML) and builds the dataclass with :func:`from_dict`, which checks every key (an unknown key
fails naming the key, its value and the valid keys) and every value's type (no conversion
between kinds: a number is not a string), then lets the dataclass validate. :func:`to_dict` is
the inverse: the mapping :func:`from_dict` reads back (what ``config.json`` holds).

Two extensions serve sections whose layout grows or moves:

* A field whose metadata holds :data:`SECTIONS` (``(names, config_class)``: the valid names and
  the dataclass of each) takes the section's other keys as named sub-sections: ``model.daian.*``
  becomes ``sections["daian"] = DaianConfig(...)``. :func:`to_dict` writes them back inline.
* A class attribute ``MOVED_KEYS = {"old_key": "sub.new_key"}`` keeps old keys loading: each is
  moved to its new place, and one deprecation line (:func:`deprecated`) names old and new keys;
  a run folder's ``config.json``, which the user did not write, is read without it.

This module is in ``features/``, the bottom layer, so every package reads its settings (and a
run's ``config.json``) through it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import re
import sys
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from tirec.features.jsonio import is_remote, read_text

SECTIONS = "tirec.sections"
RUN_CONFIG = "config.json"


def deprecated(message: str) -> None:
    """Prints one deprecation line to stderr (a CLI flag or config key that still works)."""
    print(f"tirec: deprecated: {message}", file=sys.stderr)


class DeprecatedFlag(argparse.Action):
    """An old spelling of a command-line flag: stores (or, with ``append=True``, appends) its
    value where the new flag does, prints one :func:`deprecated` line naming the new flag, and is
    hidden from ``--help``.

    Example: ``p.add_argument("--model-dir", dest="run", action=DeprecatedFlag, new="--run")``.
    """

    def __init__(self, option_strings, dest, new: str, append: bool = False, **kwargs):
        self.new, self.append = new, append
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} is now {self.new}")
        if self.append:
            values = list(getattr(namespace, self.dest, None) or []) + [values]
        setattr(namespace, self.dest, values)


_INT, _FLOAT, _BOOL = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool"))


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's core-schema numbers and booleans instead of PyYAML's YAML 1.1 ones,
    which silently change what a user wrote: ``4:00`` is not 240 (base 60), ``050`` not 40
    (octal), ``yes`` / ``off`` not booleans (they stay strings, so a boolean setting refuses
    them); ``1e-05``, ``-.5`` and ``.inf`` are floats, ``100_000`` an int (as Python writes it).
    A key given twice in one mapping is an error (PyYAML keeps the last silently); merge keys
    (``<<: *anchor``) work as before."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class names it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _int(loader, node) -> int:
    text = loader.construct_scalar(node)
    sign, body = (-1 if text[0] == "-" else 1), text.lstrip("+-")
    base = {"0o": 8, "0x": 16}.get(body[:2], 10)
    return sign * int(body[2:] if base != 10 else body, base)


for _tag, _rx, _first in (
        (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        (_INT, r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (_FLOAT, r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                 r"|\.(?:nan|NaN|NAN))$", "-+.0123456789")):
    _Loader.add_implicit_resolver(_tag, re.compile(_rx), list(_first))
_Loader.add_constructor(_INT, _int)


def parse_yaml(text: str, source: str = "YAML"):
    """``text`` parsed as YAML (JSON included).

    Raises:
      ValueError: naming ``source`` (a file, or an override's text), YAML's problem and where
        it is (``line L, column C``, 1-based).
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """YAML's short problem and its 1-based line and column (PyYAML's own text spans lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_mapping(source: str) -> dict:
    """The mapping in a YAML or JSON file, or in a run folder's ``config.json``.

    Raises:
      FileNotFoundError: naming ``source`` when it does not exist.
      ValueError: when the file's top level is not a mapping.
    """
    path = _config_file(source)
    raw = parse_yaml(read_text(path), f"config {path}")
    raw = {} if raw is None else raw  # an empty file
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: the top level must be a mapping; received {type(raw).__name__}")
    return raw


def is_folder(source: str) -> bool:
    """``source`` (local or remote) is a folder."""
    if is_remote(source):
        import tensorflow as tf

        return tf.io.gfile.isdir(source)
    return os.path.isdir(source)


def _config_file(source: str) -> str:
    if is_remote(source):
        import tensorflow as tf

        exists = tf.io.gfile.exists(source)
    else:
        exists = os.path.exists(source)
    if is_folder(source):
        path = f"{source.rstrip('/')}/{RUN_CONFIG}"
        if not is_remote(path) and not os.path.exists(path):
            raise FileNotFoundError(f"config {source}: a folder without {RUN_CONFIG} (not a run folder)")
        return path
    if not exists:
        raise FileNotFoundError(f"config {source}: no such file or folder")
    return source


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``raw`` with each ``key.sub=value`` of ``overrides`` set (value parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or a file's empty section (`model:`)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_yaml(value, f"override {item!r}")
    return raw


def load(cls: type, source: str | None = None, overrides: Sequence[str] = (), where: str = "",
         quiet: bool = False, skip: Sequence[str] = ()) -> Any:
    """Dataclass ``cls`` from ``source`` (a YAML/JSON file or a run folder; optional) with
    ``overrides`` applied.

    Args:
      quiet: do not print the deprecation line for moved keys (for a ``config.json`` that an
        older tirec wrote: the user cannot and need not change it).
      skip: top-level keys of ``source`` left unread (the sections of another command, in a
        file shared by every command); the caller tells the user.
    """
    raw = {k: v for k, v in (read_mapping(source) if source else {}).items() if k not in skip}
    moved: list[tuple[str, str]] = []
    cfg = from_dict(cls, apply_overrides(raw, overrides), where, moved=moved)
    if moved and not quiet:
        report_moved(moved, source)
    return cfg


def report_moved(moved: list[tuple[str, str]], source: str | None = None) -> None:
    """One deprecation line naming every moved key read and its new name."""
    pairs = ", ".join(f"{old} is now {new}" for old, new in moved)
    deprecated(f"config key(s) {pairs}{f' (in {source})' if source else ''}; the old names still "
               f"load but will be removed")


def from_dict(cls: type, data: Mapping[str, Any], where: str = "",
              moved: list[tuple[str, str]] | None = None) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking keys and coercing types.

    Args:
      where: the dotted path of the section, for messages (``model``).
      moved: collects ``(old, new)`` for each key read under its old name (see the module
        docstring); None prints the deprecation line at once.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping; received {data!r}")
    report = moved is None
    moved = [] if moved is None else moved
    known, sections, open_field = _split_keys(cls, _move_keys(cls, data, where, moved), where)
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, _join(where, name), moved) for name, value in known.items()}
    if open_field is not None:
        config_class = open_field.metadata[SECTIONS][1]
        kwargs[open_field.name] = {
            name: from_dict(config_class(name), {} if value is None else value, _join(where, name), moved)
            for name, value in sections.items()}
    cfg = cls(**kwargs)
    if report and moved:
        report_moved(moved)
    return cfg


def _split_keys(cls: type, data: dict, where: str):
    """``(fields, sub-sections, the sections field or None)`` of ``data``.

    Raises:
      ValueError: naming each unknown key with its value, and the valid keys.
    """
    fields = {f.name for f in dataclasses.fields(cls) if SECTIONS not in f.metadata}
    open_field = next((f for f in dataclasses.fields(cls) if SECTIONS in f.metadata), None)
    names = open_field.metadata[SECTIONS][0]() if open_field is not None and set(data) - fields else []
    known = {k: v for k, v in data.items() if k in fields}
    sections = {k: v for k, v in data.items() if k not in fields and k in names}
    unknown = {k: v for k, v in data.items() if k not in fields and k not in names}
    if unknown:
        valid = sorted(fields) + [f"{name}.*" for name in names]
        shown = ", ".join(f"{_join(where, k)}={v!r}" for k, v in sorted(unknown.items(), key=lambda kv: str(kv[0])))
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {sorted(map(str, unknown))} (received "
                         f"{shown}); valid keys: {valid}{_section_hint(cls, unknown)}")
    return known, sections, open_field


def _section_hint(cls: type, unknown: dict) -> str:
    """A hint when every unknown key is a key of one section of ``cls`` (a file holding one
    section alone, as a pipeline output's ``config.json``), else ""."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and set(unknown) <= {g.name for g in dataclasses.fields(tp)}:
            return (f". They are keys of the {f.name!r} section (a file holding that section alone, as a "
                    f"pipeline output's config.json): nest them under '{f.name}:'")
    return ""


def _move_keys(cls: type, data: Mapping[str, Any], where: str, moved: list) -> dict:
    """``data`` with the keys of ``cls.MOVED_KEYS`` moved to their new dotted place."""
    renames = getattr(cls, "MOVED_KEYS", {})
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for old in [k for k in data if k in renames]:
        *path, leaf = renames[old].split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{_join(where, part)}: expected a mapping; received {node!r}")
        if leaf in node:
            raise ValueError(f"{_join(where, old)} and {_join(where, renames[old])} are both set: "
                             f"{_join(where, old)} is the old name of {_join(where, renames[old])}; "
                             f"keep only the new one")
        node[leaf] = data.pop(old)
        moved.append((_join(where, old), _join(where, renames[old])))
    return data


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def to_dict(cfg: Any) -> dict:
    """The plain mapping of a config dataclass, as :func:`from_dict` reads it back (sub-sections
    inline under their names, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if SECTIONS in f.metadata:
            out.update({name: to_dict(section) for name, section in value.items()})
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


_SCALARS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _coerce(tp, value, where: str, moved: list):
    """``value`` as type ``tp``: no conversion between kinds (a number is not a string).

    Raises:
      ValueError: naming the key, the value with its type, and the type expected.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, where, moved)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, where, moved)
    if origin is tuple:
        return _coerce_tuple(args, value, where, moved)
    if tp not in _SCALARS:
        return value
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53),
        float: lambda v: isinstance(v, (int, float)),
        str: lambda v: isinstance(v, str),
    }[tp](value) and (tp is bool or not isinstance(value, bool))
    if not ok:
        raise ValueError(f"{where}: expected {_SCALARS[tp]}; received {_shown(value)}")
    return tp(value)


def _coerce_union(args: tuple, value, where: str, moved: list):
    """The first member type of a Union that accepts ``value`` as it is."""
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    for member in members:
        try:
            return _coerce(member, value, where, moved)
        except ValueError:
            continue
    expected = " or ".join(_expected(a) for a in args)
    raise ValueError(f"{where}: expected {expected}; received {_shown(value)}")


def _coerce_tuple(args: tuple, value, where: str, moved: list) -> tuple:
    if isinstance(value, str):  # "click,pv" -> ("click", "pv")
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected {_expected(tuple[args])}; received {_shown(value)}")
    if args and args[-1] is not Ellipsis and len(args) != len(value):
        raise ValueError(f"{where}: expected {len(args)} values; received {_shown(value)}")
    types_ = [args[0]] * len(value) if args and args[-1] is Ellipsis else list(args)
    return tuple(_coerce(t, v, f"{where}[{i}]", moved) for i, (t, v) in enumerate(zip(types_, value)))


def _expected(tp) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _shown(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_count(value, least: int = 1) -> bool:
    """``value`` is an integer (Python or numpy, not a bool) >= ``least``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def is_finite(value) -> bool:
    """``value`` is a finite real number (Python or numpy, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or math.isfinite(value)


class Checks:
    """The value checks of one config section: each failure raises a ValueError naming
    ``<where>.<field>`` and the value received (a list as a list), e.g.
    ``Checks("model.daian", self).counts("att_units", "att_heads")``."""

    def __init__(self, where: str, section: Any):
        self.where, self.section = where, section

    def bad(self, field: str, why: str):
        value = getattr(self.section, field)
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"{self.where}.{field}: {why}; received {shown!r}")

    def counts(self, *fields: str, least: int = 1, note: str = "") -> None:
        """Integers >= ``least``; ``note`` says what ``least`` means, e.g. ``" (0 = off)"``."""
        for field in fields:
            if not is_count(getattr(self.section, field), least):
                self.bad(field, f"must be an integer >= {least}{note}")

    def widths(self, *fields: str, empty: str = "") -> None:
        """Layer sizes: a list of integers >= 1, non-empty unless ``empty`` says what [] means."""
        for field in fields:
            units = getattr(self.section, field)
            if not isinstance(units, (list, tuple)) or not all(is_count(u) for u in units) \
                    or not (units or empty):
                self.bad(field, f"must be a list of layer sizes >= 1 ([] = {empty})" if empty else
                         "must be a non-empty list of layer sizes >= 1")

    def heads(self, units: str = "att_units", heads: str = "att_heads") -> None:
        """Attention width and heads: integers >= 1, the width divisible by the heads."""
        self.counts(units, heads)
        if getattr(self.section, units) % getattr(self.section, heads):
            self.bad(units, f"must be divisible by {heads}={getattr(self.section, heads)}")

    def flags(self, *fields: str) -> None:
        for field in fields:
            if not isinstance(getattr(self.section, field), bool):
                self.bad(field, "must be true or false")

    def one_of(self, field: str, allowed: Sequence[str]) -> None:
        if getattr(self.section, field) not in allowed:
            words = " or ".join(allowed) if len(allowed) == 2 else f"one of {', '.join(allowed)}"
            self.bad(field, f"must be {words}")

    def finite(self, field: str, above: float | None = None, least: float | None = None,
               note: str = "") -> None:
        """A finite number, > ``above`` or >= ``least`` when given."""
        value = getattr(self.section, field)
        if not is_finite(value) or (above is not None and not value > above) \
                or (least is not None and not value >= least):
            bound = f" > {above:g}" if above is not None else f" >= {least:g}" if least is not None else ""
            self.bad(field, f"must be a finite number{bound}{note}")
