"""``beo``: the umbrella command of beokit."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from beokit import __version__
from beokit.errors import EXIT_USAGE, OneLineParser, int_in

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in SIZE_UNITS else ""
    try:
        value = int(float(t[: len(t) - len(unit)]) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: must be positive")
    return value


node_count = int_in("node count", 1, 250, " (127.0.0.2-251)")


# Subcommands whose pillar lives in its own package: command -> module with
# ``add_parser(subparsers)`` (registers the command, possibly several) and
# ``run(args) -> int``.
PILLARS: dict[str, str] = {
    "cast": "beokit.cast.cli",
    "dshd": "beokit.dsh.cli",
    "dsh": "beokit.dsh.cli",
    "top": "beokit.dsh.cli",
    "boot": "beokit.boot.cli",
}


# Commands registered by a module of their own (``add_parser(sub)``), besides PILLARS.
BUILTIN_COMMANDS: dict[str, str] = {
    "exec": "beokit.nettee.execute",
    "vcluster": "beokit.vcluster.cli",
    "run": "beokit.launch.cli",
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, if it is the first word (``beo cast ...``)."""
    if argv and argv[0] in ("demo", *BUILTIN_COMMANDS, *PILLARS):
        return argv[0]
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """beo's parser; ``only``: register that command alone (``beo cast ...`` need not
    import every pillar and rich: ~0.3 s of CPU before anything starts)."""
    p = OneLineParser(
        prog="beo",
        description="beokit: feed and drive a cluster. The classic single-dash network tee "
        "is its own command: see `nettee -h`.",
    )
    p.add_argument("--version", action="version", version=f"beokit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    if only is None or only == "demo":
        _add_demo(sub)
    modules = [m for c, m in {**BUILTIN_COMMANDS, **PILLARS}.items() if only in (None, c)]
    for module in dict.fromkeys(modules):
        try:
            pillar = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as e:  # a pillar not built in this tree
            if e.name != module:
                raise
            continue
        pillar.add_parser(sub)
    return p


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help="beo cast a generated image to receivers on 127.0.0.2.. and verify every copy",
        description="Generate an image and run `beo cast -R exec IMAGE '127.0.0.[2-N+1]' --to "
        "DIR/{host}.out`: a receiver per loopback address, a fresh shared secret over each "
        "receiver's stdin, one nettee chain with -heal and -digest, fsync, the per-node table "
        "(bytes, digest check, time, rate); then check every copy with sha256 on its own.",
    )
    d.add_argument("-n", "--nodes", type=node_count, default=4, help="receivers (default 4)")
    d.add_argument("--size", type=parse_size, default=parse_size("256M"),
                   help="bytes to send, e.g. 64M, 1G (default 256M)")  # fmt: skip
    d.add_argument("--keep", metavar="DIR", help="keep the source and outputs in DIR")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `beo ... | head`: the reader left; say nothing more (as cat and ls do)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


def _main(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(words))
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "demo":
        from rich.console import Console

        from beokit.nettee.demo import run_demo

        return run_demo(args.nodes, args.size, args.keep, Console(), beo=main)
    if args.command == "exec":
        from beokit.nettee.execute import run as run_exec

        return run_exec(args)
    if args.command == "vcluster":
        from beokit.vcluster.cli import run as run_vcluster

        return run_vcluster(args)
    if args.command == "run":
        from beokit.launch.cli import run as run_launch

        return run_launch(args)
    if args.command in PILLARS:
        return int(__import__(PILLARS[args.command], fromlist=["run"]).run(args))
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
