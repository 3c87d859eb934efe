"""``nettee``: the classic single-dash command line of nettee 0.2."""

from __future__ import annotations

import os
import stat
import sys

from beokit.errors import EXIT_USAGE, UsageError
from beokit.nettee import helptext
from beokit.nettee.log import NetteeLog
from beokit.nettee.node import Node, node_name
from beokit.nettee.options import ALIASES, VALUE_OPTIONS, Help, NetteeConfig, Role, parse_args
from beokit.nettee.text import shown

HELP_TEXT = {
    Help.MAIN: helptext.USAGE,
    Help.EXAMPLES: helptext.EXAMPLES,
    Help.ERRORS: helptext.ERRORS,
    Help.PROCESS: helptext.PROCESS,
    Help.VERSION: helptext.VERSION,
}


# The GNU spellings every command answers to, as aliases of the man page's own.
LONG_ALIASES = {"--help": "-h", "--version": "-i"}


def long_aliases(argv: list[str]) -> list[str]:
    """``--help`` and ``--version`` where an option may stand (not as an option's
    value: ``-name --help`` names the node) become ``-h`` and ``-i``."""
    out = list(argv)
    i = 0
    while i < len(out):
        if out[i] in LONG_ALIASES:
            out[i] = LONG_ALIASES[out[i]]
        elif ALIASES.get(out[i], out[i]) in VALUE_OPTIONS:
            i += 1
        i += 1
    return out


def read_secret(cfg: NetteeConfig) -> bytes | None:
    """The shared secret: -secret_file PATH, else $NETTEE_SECRET, else none."""
    if cfg.secret_file is not None:
        try:
            with open(cfg.secret_file, "rb") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read -secret_file {shown(cfg.secret_file)}: {exc.strerror}") from None
        if not secret:
            raise UsageError(f"-secret_file {shown(cfg.secret_file)} is empty")
        return secret
    env = os.environ.get("NETTEE_SECRET")
    if env is not None:
        if not env:
            raise UsageError("NETTEE_SECRET is set but empty")
        return env.encode()
    return None


def open_source(src: str) -> int:
    if src == "-":
        return sys.stdin.fileno()
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read -in {shown(src)}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"cannot read -in {shown(src)}: is a directory")
    return fd


def open_inputs(cfg: NetteeConfig) -> list[int]:
    """Open every -in source before anything starts ("socket": started later by -cmd)."""
    return [open_source(src) for src in cfg.inputs if src != "socket"]


def open_output(cfg: NetteeConfig) -> tuple[int | None, bool]:
    """Open -out before anything starts; returns (fd, is_regular_file)."""
    if cfg.out in ("none", "socket"):
        return None, False
    if cfg.out == "-":
        return sys.stdout.fileno(), False
    try:
        # no O_TRUNC: an existing file is truncated only when the stream starts
        fd = os.open(cfg.out, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot create -out {shown(cfg.out)}: {exc.strerror}") from None
    return fd, stat.S_ISREG(os.fstat(fd).st_mode)


def check_report(cfg: NetteeConfig) -> None:
    """The root's -report PATH must be writable before any data moves.

    The report is written at the end to a temporary name beside PATH and
    renamed over it, so the probe does the same (a file created and removed
    at once): nothing is left behind, and an existing report is untouched.
    An existing PATH that is not a regular file (/dev/stdout) is written in
    place instead, so it must be writable as it is.
    """
    path = cfg.report
    if path is None or cfg.role is not Role.ROOT:
        return
    if not path:
        raise UsageError("bad -report '': give a file name")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"cannot write -report {shown(path)}: {exc.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"cannot write -report {shown(path)}: is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not os.access(path, os.W_OK):
            raise UsageError(f"cannot write -report {shown(path)}: permission denied")
        return
    folder, base = os.path.split(path)
    probe = os.path.join(folder, f".{base}.probe{os.getpid()}.{os.urandom(4).hex()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise UsageError(f"cannot write -report {shown(path)}: {exc.strerror}") from None
    os.unlink(probe)


def _settings(cfg: NetteeConfig, log: NetteeLog, name: str) -> None:
    log.settings(f"node {name}, role {cfg.role.value}, flow {cfg.flow}, port {cfg.port}")
    for opt, value in cfg.given.items():
        log.settings(f"  {opt} {value}".rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args(long_aliases(argv))
        if cfg.help is not None:
            sys.stdout.write(HELP_TEXT[cfg.help])
            return 0
        secret = read_secret(cfg)
        local_fds = open_inputs(cfg)
        in_fd = local_fds[0] if cfg.role is Role.ROOT and local_fds else None
        out_fd, out_is_file = open_output(cfg)
        check_report(cfg)
        try:
            log = NetteeLog(cfg.verbose, cfg.log, node_name(cfg))
        except OSError as exc:
            raise UsageError(f"cannot open -log {shown(cfg.log)}: {exc.strerror}") from None
    except UsageError as exc:
        print(f"nettee: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _settings(cfg, log, node_name(cfg))
    node = Node(cfg, log, secret, in_fd=in_fd, out_fd=out_fd, out_is_file=out_is_file,
                local_fds=local_fds)
    status = node.run()
    log.flush()
    sys.stdout.flush()
    return status


def entry() -> None:
    """The ``nettee`` command: :func:`main`, then out without the interpreter's own
    clean-up (a node's reports climb the chain while the nodes below it exit: tens
    of ms of CPU each, on the cores the climb needs)."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        status = status or 1
    os._exit(status)


if __name__ == "__main__":
    entry()
