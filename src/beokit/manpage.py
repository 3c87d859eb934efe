"""Manual pages in roff, generated from the argument parsers (``beo man``).

``beo(1)`` lists the subcommands; ``beo-COMMAND(1)`` is one page per subcommand
(a subcommand's own actions, as ``beo vcluster up``, are sections of its page);
``nettee(1)`` is made from nettee's help texts (its single-dash command line is
not argparse). Hand-rolled: argparse-manpage is not installable here, and the
pages need nothing it does beyond walking the parsers.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable

from beokit import __version__, cliargs, settings

SEE_ALSO_EXTRA = ("nettee", "clush", "pdsh", "ssh")


def escape(text: str) -> str:
    """Text made safe for roff: backslashes, dashes, a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def _paragraphs(text: str) -> list[str]:
    """``.PP`` paragraphs; a block of several lines (examples) stays as laid out."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        if "\n" in block.strip("\n"):
            out.append(".PP\n.nf\n" + escape(block) + "\n.fi")
        else:
            out.append(".PP\n" + escape(" ".join(block.split())))
    return out


def _header(name: str, summary: str) -> list[str]:
    return [f'.TH {name.upper()} 1 "" "beokit {__version__}" "beokit manual"',
            ".SH NAME", f"{escape(name)} \\- {escape(summary)}"]  # fmt: skip


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    formatter = parser._get_formatter()
    if action.option_strings:
        names = ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
            names += f" \\fI{escape(metavar)}\\fR"
    else:
        names = f"\\fI{escape(formatter._metavar_formatter(action, action.dest)(1)[0])}\\fR"
    text = formatter._expand_help(action) if action.help else ""
    return [".TP", names, escape(" ".join(text.split()))]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        out += _option(parser, action)
    return out


def _synopsis(parser: argparse.ArgumentParser) -> list[str]:
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    rest = usage.removeprefix(parser.prog).strip()
    return [".SH SYNOPSIS", f".B {escape(parser.prog)}", escape(rest)]


def command_page(parser: argparse.ArgumentParser, name: str, summary: str) -> str:
    """The page of one (sub)command: synopsis, description, options, its actions."""
    lines = _header(name, summary) + _synopsis(parser)
    lines += [".SH DESCRIPTION", *_paragraphs(parser.description or summary)]
    lines += [".SH OPTIONS", *_options(parser)]
    sub = cliargs.subparsers_of(parser)
    if sub is not None:
        lines.append(".SH COMMANDS")
        for word, text in cliargs.command_help(sub).items():
            child = sub.choices[word]
            lines += [f".SS {escape(child.prog)}", *_synopsis(child)[2:]]
            lines += _paragraphs(child.description or text)
            lines += _options(child)
    if parser.epilog:
        lines += [".SH NOTES", *_paragraphs(parser.epilog)]
    lines += [".SH FILES", f".TP\n{escape(settings.DEFAULT_CONFIG_DIR)}/{settings.DEFAULTS_FILE}",
              escape("site defaults of the long options, table [COMMAND] (beo config show); "
                     f"${settings.CONFIG_DIR_ENV} replaces {settings.DEFAULT_CONFIG_DIR}")]  # fmt: skip
    see = ["beo"] if name != "beo" else []
    lines += [".SH SEE ALSO", ",\n".join(f".BR {escape(s)} (1)" for s in (*see, *SEE_ALSO_EXTRA))]
    return "\n".join(lines) + "\n"


def beo_page(parser: argparse.ArgumentParser) -> str:
    """beo(1): the umbrella, its subcommands each with a pointer to its own page."""
    page = command_page(parser, "beo", "feed and drive a cluster: boot, run, cast, dsh, top")
    sub = cliargs.subparsers_of(parser)
    pages = [f"beo-{word}" for word in (sub.choices if sub else {})]
    return page.replace(".SH SEE ALSO\n", ".SH SEE ALSO\n" + "".join(
        f".BR {escape(p)} (1),\n" for p in pages), 1)  # fmt: skip


def nettee_page() -> str:
    """nettee(1), from the texts of ``nettee -h``, ``-hexamples``, ``-herrors``, ``-hprocess``."""
    from beokit.nettee import helptext

    head, _, body = helptext.USAGE.partition("\nusage:")
    summary = " ".join(head.split("\n", 1)[0].split(" - ", 1)[1:]) or "a network tee"
    lines = _header("nettee", summary.rstrip(","))
    lines += [".SH SYNOPSIS", ".B nettee", "[\\fIoptions\\fR]", ".SH DESCRIPTION",
              *_paragraphs(" ".join(head.split()))]  # fmt: skip
    lines += [".SH OPTIONS", *_option_table(body.partition("\n")[2])]
    for title, text in (("EXAMPLES", helptext.EXAMPLES), ("EXIT STATUS AND ERRORS", helptext.ERRORS),
                        ("PROCESSING", helptext.PROCESS)):  # fmt: skip
        lines += [f".SH {title}", ".nf", escape(text.split("\n", 1)[1].strip("\n")), ".fi"]
    lines += [".SH SEE ALSO", ".BR beo (1),", ".BR beo\\-cast (1),", ".BR dolly (1)"]
    return "\n".join(lines) + "\n"


def _option_table(text: str) -> list[str]:
    """nettee's option list ("  -opt ARG     text" lines under section titles) as roff."""
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            out.append(f".SS {escape(line.strip())}")
        elif line.startswith("  ") and not line.startswith("   ") and "  " in line.strip():
            term, _, desc = line.strip().partition("  ")
            out += [".TP", f"\\fB{escape(term.strip())}\\fR", escape(desc.strip())]
        elif out and out[-1].startswith(".SS"):
            out.append(escape(line.strip()))
        else:
            out.append(escape(line.strip()))
    return out


def pages(parser: argparse.ArgumentParser) -> dict[str, Callable[[], str]]:
    """Every page: name -> a function that renders it."""
    out: dict[str, Callable[[], str]] = {"beo": lambda: beo_page(parser), "nettee": nettee_page}
    sub = cliargs.subparsers_of(parser)
    for word, summary in (cliargs.command_help(sub) if sub else {}).items():
        child = sub.choices[word]  # type: ignore[union-attr]
        out[f"beo-{word}"] = (lambda c=child, w=word, s=summary:
                              command_page(c, f"beo-{w}", s))  # fmt: skip
    return out


def page_name(page: str, available: dict[str, Callable[[], str]]) -> str:
    """``run`` and ``beo-run`` both name beo-run(1); an unknown page is a UsageError."""
    from beokit.errors import UsageError

    for name in (page, f"beo-{page}", page.replace(" ", "-")):
        if name in available:
            return name
    raise UsageError(f"bad page {page!r}: one of {', '.join(available)}")


def write_pages(available: dict[str, Callable[[], str]], folder: str) -> list[str]:
    """Write every page to ``folder``/NAME.1; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, render in available.items():
        path = os.path.join(folder, f"{name}.1")
        with open(path, "w") as fh:
            fh.write(render())
        written.append(path)
    return written
