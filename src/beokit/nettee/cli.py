"""``nettee``: the classic single-dash command line of nettee 0.2."""

from __future__ import annotations

import os
import stat
import sys

from beokit.errors import EXIT_USAGE, UsageError
from beokit.nettee import helptext
from beokit.nettee.log import NetteeLog
from beokit.nettee.node import Node, node_name
from beokit.nettee.options import Config, Help, Role, parse_args

HELP_TEXT = {
    Help.MAIN: helptext.USAGE,
    Help.EXAMPLES: helptext.EXAMPLES,
    Help.ERRORS: helptext.ERRORS,
    Help.PROCESS: helptext.PROCESS,
    Help.VERSION: helptext.VERSION,
}


def read_secret(cfg: Config) -> bytes | None:
    """The shared secret: -secret_file PATH, else $NETTEE_SECRET, else none."""
    if cfg.secret_file is not None:
        try:
            with open(cfg.secret_file, "rb") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read -secret_file {cfg.secret_file!r}: {exc.strerror}") from None
        if not secret:
            raise UsageError(f"-secret_file {cfg.secret_file!r} is empty")
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
        raise UsageError(f"cannot read -in {src!r}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"cannot read -in {src!r}: is a directory")
    return fd


def open_inputs(cfg: Config) -> list[int]:
    """Open every -in source before anything starts ("socket": started later by -cmd)."""
    return [open_source(src) for src in cfg.inputs if src != "socket"]


def open_output(cfg: Config) -> tuple[int | None, bool]:
    """Open -out before anything starts; returns (fd, is_regular_file)."""
    if cfg.out in ("none", "socket"):
        return None, False
    if cfg.out == "-":
        return sys.stdout.fileno(), False
    try:
        # no O_TRUNC: an existing file is truncated only when the stream starts
        fd = os.open(cfg.out, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot create -out {cfg.out!r}: {exc.strerror}") from None
    return fd, stat.S_ISREG(os.fstat(fd).st_mode)


def _settings(cfg: Config, log: NetteeLog, name: str) -> None:
    log.settings(f"node {name}, role {cfg.role.value}, flow {cfg.flow}, port {cfg.port}")
    for opt, value in cfg.given.items():
        log.settings(f"  {opt} {value}".rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_args(argv)
        if cfg.help is not None:
            sys.stdout.write(HELP_TEXT[cfg.help])
            return 0
        secret = read_secret(cfg)
        local_fds = open_inputs(cfg)
        in_fd = local_fds[0] if cfg.role is Role.ROOT and local_fds else None
        out_fd, out_is_file = open_output(cfg)
        try:
            log = NetteeLog(cfg.verbose, cfg.log, node_name(cfg))
        except OSError as exc:
            raise UsageError(f"cannot open -log {cfg.log!r}: {exc.strerror}") from None
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


if __name__ == "__main__":
    sys.exit(main())
