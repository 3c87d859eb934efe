"""Errors shared by every pillar.

A :class:`UsageError` is bad input from the user: the command prints its
message as one line on stderr and exits with status 2, before anything has
been started.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import NoReturn

# argparse is imported only where a parser or an argument type is used: beo cast's
# receivers and the launcher's agents import this module on every node, and argparse
# (with gettext) is ~15 ms of their start-up there.

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class BeokitError(Exception):
    """A runtime failure that ends a command with a clear message."""

    exit_status = EXIT_FAILURE


class UsageError(BeokitError):
    """Bad input from the user (exit status 2)."""

    exit_status = EXIT_USAGE


class WireError(Exception):
    """Bytes from the network that are not the protocol they claim to be.

    The one base of every wire decoder's error (nettee's control messages, the
    launcher's and beo cast's lines, dshd's packets, DHCP/TFTP/DNS datagrams):
    a driver that catches ``WireError`` drops the message or the connection and
    carries on; it never ends a command by itself.
    """


def _one_line_parser() -> type[argparse.ArgumentParser]:
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        """Bad input: one line on stderr naming the bad value, exit status 2.

        A subcommand parser made by the umbrella's ``add_subparsers`` gets this
        behaviour with ``parser.__class__ = OneLineParser`` (same state).
        """

        def error(self, message: str) -> NoReturn:
            sys.stderr.write(f"{self.prog}: {message}\n")
            sys.exit(EXIT_USAGE)

    return OneLineParser


def __getattr__(name: str) -> Any:
    """``OneLineParser`` (an argparse.ArgumentParser) is made on first use."""
    if name == "OneLineParser":
        cls = globals()["OneLineParser"] = _one_line_parser()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _type_error(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def int_in(what: str, lo: int, hi: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]; errors name the value and the range."""

    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise _type_error(f"bad {what} {text!r}") from None
        if not lo <= v <= hi:
            raise _type_error(f"bad {what} {text!r}: {lo}-{hi}{note}")
        return v

    convert.__name__ = what
    return convert


MAX_SECONDS = 1_000_000.0  # ~11.6 days: longer than any wait a command should make
MAX_HOSTS = 100_000  # hosts in one command's node set (each is a launch, a process)


def check_host_count(hosts: list[str]) -> None:
    """UsageError if a node set names more than MAX_HOSTS hosts (a typo such as
    ``n[1-1000000]`` would otherwise launch a million processes)."""
    if len(hosts) > MAX_HOSTS:
        raise UsageError(f"the node set names {len(hosts):,} hosts: at most {MAX_HOSTS:,} "
                         f"(first {hosts[0]!r}, last {hosts[-1]!r})")  # fmt: skip


MAX_TEXT = 64 << 20  # a text file named on a command line: host file, topology, config


def read_text(path: str, what: str, limit: int = MAX_TEXT) -> str:
    """A small text file named on the command line (a host file, a topology...).

    :class:`UsageError` naming it if it cannot be read, is larger than
    ``limit`` bytes or is not UTF-8 text (with the first bad byte's offset).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path!r}: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"cannot read {what} {path!r}: larger than {limit >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {what} {path!r}: not UTF-8 text "
                         f"(byte {exc.start})") from None  # fmt: skip


def float_in(what: str, lo: float, hi: float, *, lo_open: bool = False,
             note: str = "") -> Callable[[str], float]:  # fmt: skip
    """An argparse type: a finite number in [lo, hi] (``lo_open``: in (lo, hi]).

    ``nan``, ``inf`` and values out of range are refused with a message that
    names the value and the range (argparse turns it into one line, exit 2).
    """
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    low = f"> {show(lo)}" if lo_open else f">= {show(lo)}"

    def convert(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise _type_error(f"bad {what} {text!r}: not a number") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise _type_error(f"bad {what} {text!r}: must be a finite number")
        if v < lo or (lo_open and v == lo) or v > hi:
            raise _type_error(f"bad {what} {text!r}: must be {low} and "
                                             f"<= {show(hi)}{note}")  # fmt: skip
        return v

    convert.__name__ = what
    return convert


def seconds(what: str, *, zero_ok: bool = False, hi: float = MAX_SECONDS) -> Callable[[str], float]:
    """An argparse type: a duration in seconds, > 0 (``zero_ok``: >= 0), finite, <= ``hi``."""
    return float_in(what, 0.0, hi, lo_open=not zero_ok, note=" seconds")


def ip_address(what: str) -> Callable[[str], str]:
    """An argparse type: an IPv4 or IPv6 address literal (no name lookup), normalised."""
    import ipaddress

    def convert(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise _type_error(f"bad {what} {text!r}: not an IP address") from None

    convert.__name__ = what
    return convert


def check_bindable(what: str, addr: str) -> None:
    """UsageError unless this machine can listen on ``addr`` (an address literal)."""
    import socket

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
    except OSError as exc:
        raise UsageError(f"bad {what} {addr!r}: cannot listen there: {exc.strerror}") from None
