"""``beo``: the umbrella command of beokit."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from beokit import __version__, cliargs
from beokit.errors import EXIT_USAGE, OneLineParser, UsageError, int_in

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
    "provision": "beokit.provision.cli",
}


# Commands registered by a module of their own (``add_parser(sub)``), besides PILLARS.
BUILTIN_COMMANDS: dict[str, str] = {
    "exec": "beokit.nettee.execute",
    "vcluster": "beokit.vcluster.cli",
    "run": "beokit.launch.cli",
}


# The toolkit's own commands, here (they read the whole parser): name -> help.
TOOLKIT_COMMANDS: dict[str, str] = {
    "config": "defaults from /etc/beokit/beo.toml: show them, print example configs",
    "man": "print a manual page (roff) generated from the option parsers, or write them all",
    "completion": "print the bash or zsh completion script for beo and nettee",
}


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, if it is the first word (``beo cast ...``)."""
    if argv and argv[0] in ("demo", *TOOLKIT_COMMANDS, *BUILTIN_COMMANDS, *PILLARS):
        return argv[0]
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """beo's parser; ``only``: register that command alone (``beo cast ...`` need not
    import every pillar and rich: ~0.3 s of CPU before anything starts)."""
    p = OneLineParser(
        prog="beo",
        description="beokit: feed and drive a cluster. The classic single-dash network tee "
        "is its own command: see `nettee -h`. Where a command runs a COMMAND, everything "
        "after `--` is that command. `beo COMMAND --help` for one, `beo man COMMAND` for its "
        "manual page. "
        "Site defaults: /etc/beokit/beo.toml ($BEOKIT_CONFIG_DIR replaces /etc/beokit; "
        "`beo config`).",
        formatter_class=cliargs.Formatter,
    )
    p.add_argument("--version", action="version", version=f"beokit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    if only is None or only == "demo":
        _add_demo(sub)
    if only is None or only in TOOLKIT_COMMANDS:
        _add_toolkit(sub)
    modules = [m for c, m in {**BUILTIN_COMMANDS, **PILLARS}.items() if only in (None, c)]
    for module in dict.fromkeys(modules):
        try:
            pillar = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as e:  # a pillar not built in this tree
            if e.name != module:
                raise
            continue
        pillar.add_parser(sub)
    cliargs.order_commands(sub, cliargs.COMMAND_ORDER)
    for _path, parser in cliargs.walk(p):
        parser.formatter_class = cliargs.Formatter
    _name_defaults_file(sub)
    return p


def _name_defaults_file(sub: argparse._SubParsersAction) -> None:
    """Each command's --help ends with where its site defaults are read."""
    from beokit import settings

    for name, parser in sub.choices.items():
        if name in TOOLKIT_COMMANDS or name == "demo":
            continue
        note = (f"Site defaults of these options: table [{name}] of {settings.config_path()} "
                "(beo config show).")  # fmt: skip
        parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note


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


def _add_toolkit(sub: argparse._SubParsersAction) -> None:
    from beokit import settings

    c = sub.add_parser("config", help=TOOLKIT_COMMANDS["config"],
                       description="Site defaults: table [COMMAND] of "
                       f"{settings.DEFAULT_CONFIG_DIR}/{settings.DEFAULTS_FILE} ($"
                       f"{settings.CONFIG_DIR_ENV} replaces {settings.DEFAULT_CONFIG_DIR}) "
                       "gives any beo command's long options their defaults; the command line "
                       "wins. `show` prints what is set, `example KIND` an example config.")  # fmt: skip
    cs = c.add_subparsers(dest="config_command", metavar="ACTION")
    cs.add_parser("show", help="print the defaults file's settings and where it is",
                  description="Print the settings of the defaults file, table by table.")
    ex = cs.add_parser("example", help="print an example config: " + ", ".join(settings.EXAMPLES),
                       description="Print an example config, to edit and install: "
                       + "; ".join(f"{k}: {v[2]} ({settings.DEFAULT_CONFIG_DIR}/{v[1]})"
                                   for k, v in settings.EXAMPLES.items()) + ".")  # fmt: skip
    ex.add_argument("kind", choices=list(settings.EXAMPLES), metavar="KIND")
    m = sub.add_parser("man", help=TOOLKIT_COMMANDS["man"],
                       description="Print the manual page PAGE as roff (read it with "
                       "`beo man PAGE | man -l -`), or write every page to DIR "
                       "(e.g. /usr/local/share/man/man1). Pages: beo, nettee, and beo-COMMAND "
                       "for each command (PAGE may be the command alone).")  # fmt: skip
    m.add_argument("page", nargs="?", default="beo", metavar="PAGE")
    m.add_argument("-w", "--write", metavar="DIR", help="write every page to DIR/PAGE.1")
    co = sub.add_parser("completion", help=TOOLKIT_COMMANDS["completion"],
                        description="Print the completion script of SHELL for beo and nettee: "
                        "subcommands, options, choices, file names and ClusterShell @groups. "
                        "bash: `source <(beo completion bash)` (or save it as "
                        "/etc/bash_completion.d/beo); zsh: `source <(beo completion zsh)`.")  # fmt: skip
    co.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL")


def _run_toolkit(args: argparse.Namespace) -> int:
    from beokit import settings

    if args.command == "config":
        if args.config_command == "example":
            sys.stdout.write(settings.example(args.kind))
            return 0
        if args.config_command == "show":
            sys.stdout.write(settings.show(settings.load_defaults(), settings.config_path()))
            return 0
        sys.stderr.write("beo config: name an action: show, example KIND\n")
        return EXIT_USAGE
    parser = build_parser()
    if args.command == "man":
        from beokit import manpage

        pages = manpage.pages(parser)
        if args.write:
            for name in manpage.write_pages(pages, args.write):
                print(name)
            return 0
        name = manpage.page_name(args.page, pages)
        sys.stdout.write(pages[name]())
        return 0
    from beokit import completion

    sys.stdout.write(completion.script(parser, args.shell))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `beo ... | head`: the reader left; say nothing more (as cat and ls do)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


def _parse(words: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``words`` with the site defaults applied; an error names the subcommand
    (``beo run: unrecognized arguments: ...``)."""
    from beokit import settings

    parser = build_parser(_command_of(words))
    path = cliargs.command_path(parser, words)
    deepest = path[-1][1] if path else parser
    if path and path[0][0] != "config":
        try:
            settings.apply(path, settings.load_defaults(), settings.config_path())
        except UsageError as exc:
            deepest.error(str(exc))
    args, extras = parser.parse_known_args(words)
    if extras:
        deepest.error(f"unrecognized arguments: {' '.join(extras)}")
    return parser, args


def _main(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser, args = _parse(words)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command in TOOLKIT_COMMANDS:
        try:
            return _run_toolkit(args)
        except UsageError as exc:
            sys.stderr.write(f"beo {args.command}: {exc}\n")
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
