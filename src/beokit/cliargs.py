"""The one command-line convention of ``beo``'s subcommands (docs/toolkit.md).

Shared by the umbrella (:mod:`beokit.cli`) and the pillars' parsers, so that a
pillar adopts the convention with a line or two:

* :func:`options_before_dashes` -- options anywhere before ``--`` (clush-style):
  ``beo vcluster exec host1 --name nc -- CMD`` honours ``--name``; after ``--``
  everything is the command. Without ``--`` the command starts at its first word,
  as before (``make CC='beo dsh gcc'``).
* :func:`subcommand_parser` -- the parser of the deepest subcommand a command
  line names, so that an error says ``beo run: ...``, not ``beo: ...``.
* :class:`Formatter` -- help text wrapped to the terminal, hand-laid blocks
  (examples, tables) kept as written.
* :data:`OPTIONS` -- the long option names that mean the same thing everywhere.
* :func:`plural` -- "1 host", "2 hosts".
* :class:`DeprecatedAlias` -- an option whose old short spelling still works,
  with a note on stderr when it is used (``beo cast -f`` -> ``--dolly``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from beokit.errors import OneLineParser

# The order `beo --help` lists the subcommands in: a cluster's life, from booting
# the nodes to running work on them, then the test bench and the toolkit itself.
# A command not named here is listed after these, in the order it was registered.
COMMAND_ORDER = ("boot", "provision", "run", "exec", "cast", "dsh", "dshd", "top", "vcluster", "demo",
                 "config", "man", "completion")  # fmt: skip

# The same long option for the same thing in every subcommand (short forms only
# where clush and pdsh agree with every beo subcommand: -v, -b). A pillar that
# spells one of these otherwise keeps the old spelling as a deprecated alias.
OPTIONS: dict[str, str] = {
    "--hostfile": "FILE of hosts, one a line (or node sets)",
    "--secret-file": "FILE holding the shared secret (never on the command line)",
    "--fanout": "K: children per node, or launches at a time",
    "--port": "the (first) port a command serves or talks to",
    "--timeout": "S: seconds before giving up",
    "--connect-timeout": "S: seconds a connection may take",
    "--verbose": "-v: more messages (repeatable)",
    "--json": "machine-readable output on stdout",
    "--metrics-port": "PORT: serve Prometheus text format on http://BIND:PORT/metrics",
}


class DeprecatedAlias(argparse._StoreAction):
    """A store option one of whose spellings is deprecated: it still works, and the
    command says so on stderr (:func:`say_deprecated`) once its input is checked, so
    that bad input stays one line::

        p.add_argument("-f", "--hostfile", action=DeprecatedAlias,
                       deprecated={"-f": "say --hostfile FILE (-f is the fanout in clush)"})
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *,
                 deprecated: dict[str, str], **kw: Any) -> None:  # fmt: skip
        super().__init__(option_strings, dest, **kw)
        self.deprecated = deprecated

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        given = getattr(namespace, GIVEN_DEST, None) or set()
        setattr(namespace, GIVEN_DEST, given | {self.dest})
        note = self.deprecated.get(option_string or "")
        if note:
            notes = getattr(namespace, DEPRECATED_DEST, None) or []
            setattr(namespace, DEPRECATED_DEST, [*notes, f"{option_string} is deprecated: {note}"])
        super().__call__(parser, namespace, values, option_string)


DEPRECATED_DEST = "deprecated_spellings"
GIVEN_DEST = "options_given"  # dests of DeprecatedAlias options the line gave (not defaults)


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether the command line itself gave the (DeprecatedAlias) option ``dest``,
    rather than a default (``/etc/beokit/beo.toml``)."""
    return dest in (getattr(args, GIVEN_DEST, None) or set())


def say_deprecated(args: argparse.Namespace, prog: str) -> None:
    """One line on stderr for each deprecated spelling the command line used."""
    for note in dict.fromkeys(getattr(args, DEPRECATED_DEST, None) or []):
        sys.stderr.write(f"{prog}: {note}\n")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``plural(1, "host")`` -> "1 host"; ``plural(2, "switch", "switches")`` -> "2 switches"."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


class Formatter(argparse.HelpFormatter):
    """Help text wrapped to the terminal; a paragraph of several lines is kept as
    written (examples, tables), a one-line paragraph is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = re.split(r"\n\s*\n", text.strip("\n"))
        out = []
        for block in blocks:
            if "\n" in block.strip("\n"):
                out.append("\n".join(indent + line for line in block.splitlines()))
            else:
                out.append(super()._fill_text(block, width, indent))
        return "\n\n".join(out)


class CommandParser(OneLineParser):  # type: ignore[misc, valid-type]
    """A parser whose last positional (``nargs=REMAINDER``) is a command: with a
    ``--`` on the line, the words before it are parsed as options and positionals
    in any order and the words after it are the command."""

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> Any:  # fmt: skip
        words = list(args or [])
        action = _remainder(self)
        if action is None or "--" not in words:
            return super().parse_known_args(words, namespace)
        cut = words.index("--")
        action.nargs = argparse.ZERO_OR_MORE
        try:
            ns, extras = super().parse_known_args(words[:cut], namespace)
        finally:
            action.nargs = argparse.REMAINDER
        before = list(getattr(ns, action.dest) or [])
        dashes: list[str] = []
        if getattr(self, "keep_dashes", False):
            # NODESET -b NODESET -- CMD: argparse leaves the words after the first
            # option unparsed; every word before -- that is no option is a positional
            before += [w for w in extras if not w.startswith("-")]
            extras = [w for w in extras if w.startswith("-")]
            dashes = ["--"]
        setattr(ns, action.dest, [*before, *dashes, *words[cut + 1 :]])
        return ns, extras


def _remainder(parser: argparse.ArgumentParser) -> argparse.Action | None:
    found = [a for a in parser._actions if not a.option_strings and a.nargs == argparse.REMAINDER]
    return found[-1] if found else None


def options_before_dashes(parser: argparse.ArgumentParser, *,
                          keep_dashes: bool = False) -> argparse.ArgumentParser:  # fmt: skip
    """Make ``parser`` (made by ``add_parser``, with a REMAINDER positional) a
    :class:`CommandParser`: options anywhere before ``--``. ``keep_dashes``: the
    REMAINDER keeps the ``--`` between the positionals before it and the command
    (``beo run``'s ``NODESET -- COMMAND`` in one REMAINDER). Returns it."""
    if _remainder(parser) is None:
        raise ValueError(f"{parser.prog}: no REMAINDER positional to take the command")
    parser.__class__ = CommandParser
    parser.keep_dashes = keep_dashes  # type: ignore[attr-defined]
    return parser


def subparsers_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The subcommands action of ``parser``, if it has subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def command_path(parser: argparse.ArgumentParser,
                 argv: Sequence[str]) -> list[tuple[str, argparse.ArgumentParser]]:  # fmt: skip
    """The subcommands ``argv`` names, outermost first: ``[("vcluster", p), ("up", q)]``."""
    path: list[tuple[str, argparse.ArgumentParser]] = []
    current = parser
    for word in argv:
        if word == "--":
            break
        sub = subparsers_of(current)
        if sub is None:
            break
        if word in sub.choices:
            current = sub.choices[word]
            path.append((word, current))
    return path


def subcommand_parser(parser: argparse.ArgumentParser,
                      argv: Sequence[str]) -> argparse.ArgumentParser:  # fmt: skip
    """The parser of the deepest subcommand ``argv`` names (``parser`` itself if none)."""
    path = command_path(parser, argv)
    return path[-1][1] if path else parser


def walk(parser: argparse.ArgumentParser) -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every (sub)command of ``parser``: (path of subcommand words, its parser)."""
    out: list[tuple[list[str], argparse.ArgumentParser]] = [([], parser)]
    sub = subparsers_of(parser)
    if sub is not None:
        for name, child in sub.choices.items():
            out += [([name, *path], p) for path, p in walk(child)]
    return out


def order_commands(sub: argparse._SubParsersAction, order: Sequence[str]) -> None:
    """List the subcommands in ``--help`` in ``order`` (the others after, as registered)."""
    rank = {name: i for i, name in enumerate(order)}
    sub._choices_actions.sort(key=lambda a: rank.get(a.dest, len(rank)))
    sub.choices = dict(sorted(sub.choices.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def command_help(sub: argparse._SubParsersAction) -> dict[str, str]:
    """Each subcommand's one-line help, in listing order."""
    return {a.dest: a.help or "" for a in sub._choices_actions}
