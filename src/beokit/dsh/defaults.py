"""What every dsh command agrees on: default ports, environment variables, the secret.

``beo dshd`` (the daemon), ``beo dsh`` and ``beo top`` (the clients) and their
argument parser read these; nothing here imports the daemon's or the client's
machinery, so that each command loads only its own.
"""

from __future__ import annotations

import os

from beokit.errors import UsageError

DEFAULT_STATUS_PORT = 8181  # TCP
DEFAULT_BEST_PORT = 8282  # TCP
DEFAULT_GOSSIP_PORT = 8181  # UDP; the status port is TCP
DEFAULT_JOBS_DIR = "/tmp/beokit-dsh-jobs"

SECRET_ENV = "BEO_DSH_SECRET"
DAEMON_ENV = "BEO_DSH_DAEMON"
SSH_ENV = "BEO_DSH_SSH"
JOBS_ENV = "BEO_DSH_JOBS"


def read_secret(path: str | None) -> bytes | None:
    """The shared secret from FILE, else $BEO_DSH_SECRET, else None."""
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read().strip()
        except OSError as e:
            raise UsageError(f"bad secret file {path!r}: {e.strerror}") from None
        if not data:
            raise UsageError(f"bad secret file {path!r}: empty")
        return data
    env = os.environ.get(SECRET_ENV, "").strip()
    return env.encode() if env else None
