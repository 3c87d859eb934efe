"""Errors shared by every pillar.

A :class:`UsageError` is bad input from the user: the command prints its
message as one line on stderr and exits with status 2, before anything has
been started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class BeokitError(Exception):
    """A runtime failure that ends a command with a clear message."""

    exit_status = EXIT_FAILURE


class UsageError(BeokitError):
    """Bad input from the user (exit status 2)."""

    exit_status = EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr naming the bad value, exit status 2.

    A subcommand parser made by the umbrella's ``add_subparsers`` gets this
    behaviour with ``parser.__class__ = OneLineParser`` (same state).
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message}\n")
        sys.exit(EXIT_USAGE)


def int_in(what: str, lo: int, hi: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]; errors name the value and the range."""

    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: {lo}-{hi}{note}")
        return v

    convert.__name__ = what
    return convert
