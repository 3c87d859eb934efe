"""Starting ``beo dshd``: options checked, sockets bound, log, privileges, background.

Everything that can fail because of the user's input fails here, before the
daemon forks to the background: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys

from beokit.dsh.config import DshdConfig, load_config
from beokit.dsh.daemon import Daemon
from beokit.errors import EXIT_OK, UsageError

log = logging.getLogger("beokit.dshd")


def _check_user(user: str) -> int:
    import pwd

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"bad --user {user!r}: no such user") from None
    if os.getuid() != uid and os.geteuid() != 0:
        raise UsageError(f"bad --user {user!r}: only root can change user")
    return uid


def _drop_privileges(user: str) -> None:
    import grp
    import pwd

    pw = pwd.getpwnam(user)
    if os.getuid() == pw.pw_uid:
        return
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    os.setgroups(groups)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def _daemonize(print_pid: bool) -> None:
    """Fork to the background (double fork, new session, stdio on /dev/null)."""
    r, w = os.pipe()
    if os.fork() > 0:  # the command's process: report the daemon's pid, exit
        os.close(w)
        pid = os.read(r, 32).decode().strip()
        if print_pid and pid:
            print(pid, flush=True)
        os._exit(0)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.write(w, f"{os.getpid()}\n".encode())
    os.close(w)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def setup_logging(path: str | None, verbose: int, background: bool) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if path:
        handler: logging.Handler = logging.FileHandler(path)
    elif background and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler

        handler = SysLogHandler("/dev/log")
    else:
        handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s dshd[%(process)d] %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("beokit.dshd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


def config_of(args: argparse.Namespace) -> DshdConfig:
    """The daemon's options, checked (absolute paths: -b changes to / and SIGHUP
    re-reads from there)."""
    cfg = DshdConfig(
        cluster_file=os.path.abspath(args.cluster_file), bind=args.bind, name=args.name,
        period=args.period, expire=args.expire, extra_load=args.extra_load, score=args.score,
        send_to=list(args.send_to), load_file=_abs(args.load_file),
        jobs_dir=os.path.abspath(args.jobs_dir), secret_file=_abs(args.secret_file),
        gossip_port=args.gossip_port, status_port=args.status_port, best_port=args.best_port,
        fanout=args.fanout, metrics_port=args.metrics_port,
    )  # fmt: skip
    try:
        ipaddress.IPv4Address(cfg.bind)
    except ValueError:
        raise UsageError(f"bad --bind address {cfg.bind!r}") from None
    if args.status_port == args.best_port:
        raise UsageError(f"bad --best-port {args.best_port}: same as the status port")
    if args.metrics_port is not None and args.metrics_port in (args.status_port, args.best_port):
        raise UsageError(f"bad --metrics-port {args.metrics_port}: the status or best port")
    if args.log:
        try:
            open(args.log, "a").close()
        except OSError as e:
            raise UsageError(f"bad --log file {args.log!r}: {e.strerror}") from None
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    user = args.user or ("nobody" if args.background and os.geteuid() == 0 else None)
    if user:
        _check_user(user)
    daemon = Daemon(cfg, load_config(cfg))
    daemon.bind()
    # the log is opened first: after dropping root it may not be writable any more
    setup_logging(_abs(args.log), args.verbose + 1, args.background)
    if user:
        try:
            _drop_privileges(user)
        except BaseException:
            daemon.close()
            raise
    if args.background:
        _daemonize(args.print_pid)
    try:
        asyncio.run(daemon.run())
    except Exception:
        log.exception("dshd: crashed")
        raise
    return EXIT_OK
