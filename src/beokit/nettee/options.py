"""nettee 0.2 command line: parsing and validation (pure logic, no I/O).

Every option of the man page is accepted exactly as spelled there (single
dash).  Our extensions, also single dash so they read like the rest:

``-bind ADDR``         address this node listens on (default: all)
``-secret_file PATH``  file holding the shared secret (or ``NETTEE_SECRET``)
``-stall SECONDS``     declare a silent peer dead after this long (default 5, 0 = never)
``-report FILE``       write the root's per-node results as JSON
``-heal``              self-healing: a parent whose child dies mid-stream adopts the
                       grandchildren and resumes each from the bytes it holds
``-digest``            every node hashes what it wrote (xxh3-128); the root compares
``-window BYTES``      -heal replay window per node (default 16 MiB)
``-fsync``             flush the local output to stable storage before reporting
``-stm_wait SECONDS``  root, -stm: every node reports once its commands (beo exec) have
                       ended, or SECONDS after its end of stream (0 = no limit)
``-stm_results FD``    -stm receiver: read the results of the commands run on the lines
                       it writes (beo exec) from file descriptor FD; they go up to the root
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from beokit.errors import UsageError
from beokit.nettee.hostlists import Hostlist, parse_next, parse_port
from beokit.nettee.text import NAME_MAX, printable, shown

DEFAULT_PORT = 9997
DEFAULT_BUF_SIZE = 1048576
DEFAULT_BUF_MINREAD = 128
DEFAULT_BUF_MINWRITE = 1
DEFAULT_BUF_MAXREAD = 65536
DEFAULT_BUF_MAXWRITE = 65536
DEFAULT_STALL = 5.0
# -heal: the replay window must cover what can be in flight across one hop;
# see docs/nettee-heal.md for the arithmetic (3 pipes + 4 socket buffers).
DATA_LOWAT = 1 << 20  # TCP_NOTSENT_LOWAT of data sockets: unsent bytes a hop may hold
HEAL_SOCKBUF = 1 << 20  # SO_SNDBUF/SO_RCVBUF asked for on data sockets (kernel doubles)
DEFAULT_WINDOW = 16 << 20
MAX_NAME = NAME_MAX  # the man page: <= 127 characters

# Options that take a value, and flags.  Aliases map to the canonical name.
VALUE_OPTIONS = {
    "-next", "-in", "-out", "-flow", "-port", "-t", "-v", "-log", "-name",
    "-buf_size", "-buf_minread", "-buf_minwrite", "-buf_maxread", "-buf_maxwrite",
    "-connf", "-cmd", "-process", "-stm",
    "-bind", "-secret_file", "-stall", "-report", "-window", "-stm_wait", "-stm_results",
}  # fmt: skip
FLAG_OPTIONS = {
    "-root", "-w", "-q", "-colrf", "-colwf", "-conrf", "-conwf",
    "-h", "-hexamples", "-herrors", "-hprocess", "-i", "-heal", "-digest", "-fsync",
}  # fmt: skip
ALIASES = {"-p": "-port", "-conlrf": "-colrf"}  # -conlrf: the man page's spelling slip


class Role(Enum):
    ROOT = "root"
    INTERNAL = "internal"
    TIP = "tip"


class Help(Enum):
    MAIN = "-h"
    EXAMPLES = "-hexamples"
    ERRORS = "-herrors"
    PROCESS = "-hprocess"
    VERSION = "-i"


@dataclass
class NetteeConfig:
    next: tuple[Hostlist, ...] = ()
    root: bool = False
    inputs: tuple[str, ...] = ()
    out: str = "none"
    flow: str = "push"
    port: int = DEFAULT_PORT
    timeout: float = 0.0
    wait_boot: bool = False
    verbose: int = 1
    log: str = "-"
    name: str = ""
    quiet: bool = False
    buf_size: int = DEFAULT_BUF_SIZE
    buf_minread: int = DEFAULT_BUF_MINREAD
    buf_minwrite: int = DEFAULT_BUF_MINWRITE
    buf_maxread: int = DEFAULT_BUF_MAXREAD
    buf_maxwrite: int = DEFAULT_BUF_MAXWRITE
    connf: float = 0.0
    colrf: bool = False
    colwf: bool = False
    conrf: bool = False
    conwf: bool = False
    cmd: str | None = None
    process: str | None = None
    stm: str | None = None
    stm_wait: float | None = None  # root: wait for the commands (0: no limit); None: do not
    stm_results: int | None = None  # receiver: the executor's results come on this fd
    bind: str = "0.0.0.0"
    secret_file: str | None = None
    stall: float = DEFAULT_STALL
    report: str | None = None
    heal: bool = False
    digest: bool = False
    fsync: bool = False
    window: int = DEFAULT_WINDOW
    help: Help | None = None
    given: dict[str, str] = field(default_factory=dict)

    @property
    def role(self) -> Role:
        if self.root:
            return Role.ROOT
        return Role.INTERNAL if self.next else Role.TIP


def bind_address(cfg: NetteeConfig) -> str:
    """The -bind address when one was given, else ""."""
    return cfg.bind if "-bind" in cfg.given else ""


def _number(opt: str, text: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValueError
        value = int(text, 10)
    except ValueError:
        raise UsageError(f"bad {opt} {shown(text)}: not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f" and at most {maximum}"
        raise UsageError(f"bad {opt} {shown(text)}: must be at least {minimum}{hi}")
    return value


def _seconds(opt: str, text: str) -> float:
    try:
        if not re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
            raise ValueError
        value = float(text)
    except ValueError:
        raise UsageError(f"bad {opt} {shown(text)}: not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"bad {opt} {shown(text)}: must be a finite number >= 0")
    return value


def check_name(name: str) -> str:
    """-name: 1-127 printable characters (no ESC, newline, bidi override, ...)."""
    if not name:
        raise UsageError(f"bad -name '': give 1-{MAX_NAME} printable characters")
    bad = next((i for i, c in enumerate(name) if not c.isprintable()), None)
    if bad is not None:
        raise UsageError(f"bad -name {shown(name)}: unprintable character "
                         f"{printable(name[bad])} at position {bad + 1}; give 1-{MAX_NAME} "
                         "printable characters")  # fmt: skip
    if len(name) > MAX_NAME:
        raise UsageError(f"bad -name {shown(name)}: longer than {MAX_NAME} characters")
    return name


def tokenize(argv: list[str]) -> dict[str, str]:
    """argv -> {canonical option: value ('' for flags)}; unknown options fail."""
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        raw = argv[i]
        opt = ALIASES.get(raw, raw)
        if opt in FLAG_OPTIONS:
            value = ""
        elif opt in VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise UsageError(f"option {raw} needs a value")
            value = argv[i + 1]
            i += 1
        elif raw.startswith("--") and ALIASES.get(raw[1:], raw[1:]) in VALUE_OPTIONS | FLAG_OPTIONS:
            raise UsageError(f"unknown option {shown(raw)}: nettee options take one dash ({raw[1:]})")
        else:
            raise UsageError(f"unknown option {shown(raw)} (nettee -h lists the options)")
        given[opt] = value  # repeated: the last one wins, as with getopt
        i += 1
    return given


def parse_args(argv: list[str]) -> NetteeConfig:
    """Parse and validate a nettee command line; raise UsageError on bad input."""
    given = tokenize(argv)
    cfg = NetteeConfig(given=given)
    for h in Help:
        if h.value in given:
            cfg.help = h
            return cfg
    _flags(cfg, given)
    _values(cfg, given)
    _buffers(cfg, given)
    _modes(cfg, given)
    _inputs_outputs(cfg, given)
    return cfg


def _flags(cfg: NetteeConfig, given: dict[str, str]) -> None:
    cfg.root = "-root" in given
    cfg.wait_boot = "-w" in given
    cfg.quiet = "-q" in given
    cfg.colrf, cfg.colwf = "-colrf" in given, "-colwf" in given
    cfg.conrf, cfg.conwf = "-conrf" in given, "-conwf" in given
    cfg.heal, cfg.digest, cfg.fsync = "-heal" in given, "-digest" in given, "-fsync" in given


def _values(cfg: NetteeConfig, given: dict[str, str]) -> None:
    """The options that take one value, each checked on its own."""
    if "-next" in given:
        cfg.next = parse_next(given["-next"])
    if "-port" in given:
        cfg.port = parse_port(given["-port"], "-port")
    if "-t" in given:
        cfg.timeout = _seconds("-t", given["-t"])
    if "-connf" in given:
        cfg.connf = _seconds("-connf", given["-connf"])
    if "-stall" in given:
        cfg.stall = _seconds("-stall", given["-stall"])
    if "-v" in given:
        cfg.verbose = _number("-v", given["-v"], minimum=0, maximum=31)
    if "-log" in given:
        if given["-log"] == "":
            raise UsageError("bad -log '': give - (stderr) or a file name")
        cfg.log = given["-log"]
    if "-name" in given:
        cfg.name = check_name(given["-name"])
    if "-bind" in given:
        if not given["-bind"]:
            raise UsageError("bad -bind '': give an address")
        cfg.bind = given["-bind"]
    if "-secret_file" in given:
        cfg.secret_file = given["-secret_file"]
    if "-report" in given:
        cfg.report = given["-report"]


def _buffers(cfg: NetteeConfig, given: dict[str, str]) -> None:
    """-buf_* and -window, and how they bound each other."""
    for opt, lo in (("-buf_size", 4096), ("-buf_minread", 1), ("-buf_minwrite", 1),
                    ("-buf_maxread", 1), ("-buf_maxwrite", 1)):  # fmt: skip
        if opt in given:
            setattr(cfg, opt[1:], _number(opt, given[opt], minimum=lo, maximum=1 << 30))
    if cfg.buf_minread > cfg.buf_size:
        raise UsageError(f"bad -buf_minread {cfg.buf_minread}: larger than -buf_size {cfg.buf_size}")
    if cfg.buf_minwrite > cfg.buf_size:
        raise UsageError(
            f"bad -buf_minwrite {cfg.buf_minwrite}: larger than -buf_size {cfg.buf_size}"
        )
    if "-window" in given:
        cfg.window = _number("-window", given["-window"], minimum=1 << 20, maximum=1 << 34)
    else:  # cover 3 pipes and 4 (doubled) socket buffers in flight across one hop
        cfg.window = max(DEFAULT_WINDOW, 4 * cfg.buf_size + 8 * HEAL_SOCKBUF)


def _modes(cfg: NetteeConfig, given: dict[str, str]) -> None:
    """-flow, -cmd, -process, -stm, -heal, -digest: which go together."""
    flow = given.get("-flow", "push")
    if flow not in ("push", "pull"):
        raise UsageError(f"bad -flow {shown(flow)}: must be push or pull")
    cfg.flow = flow
    cfg.cmd = given.get("-cmd")
    cfg.process = given.get("-process")
    cfg.stm = given.get("-stm")
    if cfg.cmd is not None and cfg.process is not None:
        raise UsageError("-cmd and -process may not be used together")
    if cfg.cmd == "" or cfg.process == "":
        raise UsageError("bad -cmd/-process '': give a command")
    if cfg.stm == "":
        raise UsageError("bad -stm '': give the End Of Stream string")
    if "-stm_wait" in given:
        cfg.stm_wait = _seconds("-stm_wait", given["-stm_wait"])
        if cfg.stm is None or not cfg.root:
            raise UsageError("-stm_wait is for the root of a -stm chain (-root -stm EOS)")
    if "-stm_results" in given:
        cfg.stm_results = _number("-stm_results", given["-stm_results"], minimum=3,
                                  maximum=1 << 20)  # fmt: skip
        if cfg.stm is None or cfg.root:
            raise UsageError("-stm_results is for a receiver of a -stm chain (beo exec passes it)")
    if cfg.stm is not None and cfg.buf_minwrite > 1:
        raise UsageError(f"-stm with -buf_minwrite {cfg.buf_minwrite}: lines would wait in the buffer")
    if flow == "pull" and cfg.process is None:
        raise UsageError("-flow pull may only be used with -process")
    if cfg.heal and (flow == "pull" or cfg.process is not None or cfg.stm is not None):
        what = "-flow pull" if flow == "pull" else "-process" if cfg.process else "-stm"
        raise UsageError(f"-heal with {what}: healing needs one stream pushed from the root")
    if cfg.digest and cfg.process is not None:
        raise UsageError("-digest with -process: each node's stream differs, nothing to compare")
    if cfg.window < cfg.buf_size:
        raise UsageError(f"bad -window {cfg.window}: smaller than -buf_size {cfg.buf_size}")
    if cfg.root and not cfg.next:
        raise UsageError("-root needs -next: the root node has at least one child")


def _defaults(flow: str, role: Role) -> tuple[str, str]:
    """Default (-in, -out) per flow and role, as the man page lists them."""
    if flow == "push":
        return ("-", "none") if role is Role.ROOT else ("none", "-")
    return ("-", "none") if role is Role.TIP else ("none", "-")


def _inputs_outputs(cfg: NetteeConfig, given: dict[str, str]) -> None:
    d_in, d_out = _defaults(cfg.flow, cfg.role)
    in_text = given.get("-in", d_in)
    sources = tuple(s.strip() for s in in_text.split(","))
    if any(not s for s in sources):
        raise UsageError(f"bad -in {shown(in_text)}: empty source")
    if len(sources) > 1:
        if cfg.process is None:
            raise UsageError(f"bad -in {shown(in_text)}: more than one source needs -process")
        if sources.count("-") > 1:
            raise UsageError(f"bad -in {shown(in_text)}: only one source may be stdin (-)")
        for s in ("none", "socket"):
            if s in sources:
                raise UsageError(f"bad -in {shown(in_text)}: {s} cannot be one of several sources")
    cfg.inputs = () if sources == ("none",) else sources
    cfg.out = given.get("-out", d_out)
    if cfg.out == "":
        raise UsageError("bad -out '': give none, -, socket or a file name")

    sock_in, sock_out = "socket" in cfg.inputs, cfg.out == "socket"
    if sock_in and sock_out:
        raise UsageError("socket may not be used for both -in and -out (only one -cmd)")
    if (sock_in or sock_out) and cfg.cmd is None:
        raise UsageError(f"-{'in' if sock_in else 'out'} socket needs -cmd COMMAND")
    if cfg.cmd is not None and not (sock_in or sock_out):
        raise UsageError("-cmd needs -in socket or -out socket")
    if cfg.flow == "push" and cfg.role is not Role.ROOT and cfg.inputs and cfg.process is None:
        raise UsageError(
            f"bad -in {shown(in_text)}: a non-root node takes local input only with -process"
        )
    if cfg.flow == "push" and cfg.role is Role.ROOT and not cfg.inputs and cfg.process is None:
        raise UsageError("the root node needs an input (-in - or -in FILE)")
