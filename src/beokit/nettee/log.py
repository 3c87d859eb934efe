"""nettee's ``-v`` bit mask mapped onto :mod:`logging`.

Bits: 1 errors, 2 command line settings, 4 messages, 8 periodic status,
16 prepend the node name to every message.  Every message is one line with
its unprintable characters escaped, whatever a peer put into it.
"""

from __future__ import annotations

import logging
import sys

from beokit.nettee.text import escaped

ERRORS, SETTINGS, MESSAGES, STATUS, PREFIX = 1, 2, 4, 8, 16


class NetteeLog:
    def __init__(self, verbose: int, dest: str, name: str) -> None:
        self.verbose = verbose
        self.logger = logging.getLogger(f"nettee.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        if dest == "-":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(dest, mode="a")
        prefix = f"[{name}] " if verbose & PREFIX else ""
        handler.setFormatter(logging.Formatter(f"{prefix}nettee: %(message)s"))
        self.logger.addHandler(handler)

    def on(self, bit: int) -> bool:
        return bool(self.verbose & bit)

    def error(self, msg: str) -> None:
        if self.verbose & ERRORS:
            self.logger.error(escaped(msg))

    def settings(self, msg: str) -> None:
        if self.verbose & SETTINGS:
            self.logger.info(escaped(msg))

    def message(self, msg: str) -> None:
        if self.verbose & MESSAGES:
            self.logger.info(escaped(msg))

    def status(self, msg: str) -> None:
        if self.verbose & STATUS:
            self.logger.info(escaped(msg))

    def flush(self) -> None:
        for h in self.logger.handlers:
            h.flush()
