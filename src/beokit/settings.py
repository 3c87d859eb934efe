"""Site defaults for every ``beo`` command: ``/etc/beokit/beo.toml``.

One table per command, its keys the command's long options::

    [beo]                 # every command that has the option
    secret-file = "/etc/beokit/secret"

    [run]
    fanout = 8
    rcmd = "ssh"

    [dshd]
    cluster-file = "/etc/beokit/dsh.cluster"

    [vcluster.up]         # a subcommand's own table
    mtu = 9000

A value is a default: the command line still wins. A key no option of the
command has is an error naming the file, the table and the key (exit 2), and so
is a value the option refuses. ``$BEOKIT_CONFIG_DIR`` replaces ``/etc/beokit``
(tests, a user's own defaults). The example configs are package data:
``beo config example KIND`` prints them.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from typing import Any

from beokit.errors import UsageError

CONFIG_DIR_ENV = "BEOKIT_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/etc/beokit"
DEFAULTS_FILE = "beo.toml"
COMMON_TABLE = "beo"

# KIND -> (file name in the package's examples/, where it goes, what it is)
EXAMPLES: dict[str, tuple[str, str, str]] = {
    "beo": ("beo.toml", DEFAULTS_FILE, "defaults of every beo command (this module)"),
    "boot": ("boot.toml", "boot.toml", "beo boot's server: beo boot -c /etc/beokit/boot.toml"),
    "dsh-cluster": ("dsh.cluster", "dsh.cluster", "beo dshd's members, one a line"),
}


def config_dir() -> str:
    """Where the site's configuration lives: $BEOKIT_CONFIG_DIR, else /etc/beokit."""
    return os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR


def config_path(name: str = DEFAULTS_FILE) -> str:
    return os.path.join(config_dir(), name)


def example(kind: str) -> str:
    """The text of the example config ``kind`` (package data)."""
    if kind not in EXAMPLES:
        raise UsageError(f"bad example {kind!r}: one of {', '.join(EXAMPLES)}")
    from importlib import resources

    return resources.files("beokit").joinpath("examples", EXAMPLES[kind][0]).read_text()


def load_defaults(path: str | None = None) -> dict[str, Any]:
    """The parsed defaults file ({} if there is none)."""
    path = path or config_path()
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"bad TOML in {path!r}: {exc}") from None


def _action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    for action in parser._actions:
        if f"--{key}" in action.option_strings:
            return action
    return None


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` checked by the option's own type; strings stay strings (argparse
    converts a string default itself)."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise UsageError(f"bad {where} = {value!r}: true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        return [_value(argparse.Action([], "x", type=action.type), v, where) for v in values]
    if isinstance(value, bool | dict | list):
        raise UsageError(f"bad {where} = {value!r}: a string or a number")
    text = str(value)
    if action.choices is not None and text not in action.choices:
        raise UsageError(f"bad {where} = {value!r}: one of {', '.join(map(str, action.choices))}")
    if action.type is None:
        return text
    try:
        return action.type(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise UsageError(f"bad {where} = {value!r}: {exc}") from None


def apply(path: list[tuple[str, argparse.ArgumentParser]], data: dict[str, Any],
          source: str) -> None:  # fmt: skip
    """Set the defaults ``data`` gives on the parsers of one command line's
    subcommand ``path`` (``[("run", parser)]``, ``[("vcluster", p), ("up", q)]``)."""
    parsers = [p for _, p in path]
    common = data.get(COMMON_TABLE, {})
    for key, value in common.items() if isinstance(common, dict) else ():
        for parser in parsers:
            if (action := _action(parser, key)) is not None:
                where = f"{key} in {source} [{COMMON_TABLE}]"
                parser.set_defaults(**{action.dest: _value(action, value, where)})
    table: Any = data
    for depth, (name, _parser) in enumerate(path):
        table = table.get(name, {}) if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            raise UsageError(f"bad [{name}] in {source}: a table of options")
        label = ".".join(n for n, _ in path[: depth + 1])
        for key, value in table.items():
            if isinstance(value, dict):
                continue  # a subcommand's own table, taken at the next level
            where = f"{key} in {source} [{label}]"
            targets = [(p, a) for p in parsers[depth:] if (a := _action(p, key)) is not None]
            if not targets:
                raise UsageError(f"bad {where}: beo {' '.join(label.split('.'))} has no "
                                 f"option --{key}")  # fmt: skip
            for parser, action in targets:
                parser.set_defaults(**{action.dest: _value(action, value, where)})


def show(data: dict[str, Any], source: str) -> str:
    """The defaults file as ``[table] key = value`` lines (``beo config show``)."""
    lines = [f"# {source}" + ("" if data else " (none: built-in defaults)")]

    def emit(table: dict[str, Any], label: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if scalars and label:
            lines.append(f"[{label}]")
            lines.extend(f"{k} = {v!r}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(v, f"{label}.{k}" if label else k)

    emit(data, "")
    return "\n".join(lines) + "\n"
