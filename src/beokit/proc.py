"""Processes, the same way in every pillar: how an exit is worded.

``describe_exit`` is the one wording of a process's end, for reports, logs and
errors: "exited with status 3", "killed by signal 9 (SIGKILL)".
"""

from __future__ import annotations

import os
import signal


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int | None, what: str = "") -> str:
    """One wording for how a process ended, from a ``subprocess`` return code
    (negative: killed by that signal) or None (still running).

    >>> describe_exit(3, "tar")
    'tar exited with status 3'
    >>> describe_exit(-9)
    'killed by signal 9 (SIGKILL)'
    """
    prefix = f"{what} " if what else ""
    if returncode is None:
        return f"{prefix}is still running"
    if returncode < 0:
        return f"{prefix}killed by signal {-returncode} ({signal_name(-returncode)})"
    return f"{prefix}exited with status {returncode}"


def describe_wait_status(status: int, what: str = "") -> str:
    """:func:`describe_exit` for a raw ``os.waitpid`` status."""
    if os.WIFSIGNALED(status):
        return describe_exit(-os.WTERMSIG(status), what)
    return describe_exit(os.waitstatus_to_exitcode(status), what)
