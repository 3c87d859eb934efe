"""What a node does when something fails: the failure policy as data (pure logic, no I/O).

The man page's rule is "by default severe errors cause the entire chain to
abort", and the continue-on-failure options turn some of them into handled,
reported ones.  Here that rule is one function of plain values::

    decide(Failure(Who.CHILD, Phase.STREAMING), Options(conwf=True))
        -> Decision(Action.CARRY_ON, "NWF", option="-conwf")

The node describes what happened (who failed, in which phase of its life)
and carries out the decision: collapse the tree, carry on (recording the
code), heal (adopt the dead child's children), orphan (wait for an ancestor
to adopt it), retry, or ignore.  Nothing here touches a socket, so every
combination of options is tested in milliseconds (tests/test_policy.py);
the table in docs/nettee.md is generated from :func:`decide` by
:func:`markdown_table` (``python -m beokit.nettee.policy``), and a test
checks that the two agree.

To add a failure rule: a :class:`Who` (or a case of an existing one) in
:func:`decide`, a row in :data:`ROWS`, the expected decisions in
tests/test_policy.py, then regenerate the table in docs/nettee.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from enum import Enum

from beokit.nettee.protocol import Code


class Phase(Enum):
    """Where a node is in its life: the one state of a node (see node.py)."""

    FORMING = "forming"  # joining its parent and its children; no data yet
    STREAMING = "streaming"  # the stream flows
    ORPHANED = "orphaned"  # -heal: the parent was lost mid-stream; waiting for an adopter
    ENDED = "ended"  # the parent's end of stream (its byte count) arrived
    CUT_OFF = "cut off"  # the parent is gone and that was handled: finishing alone
    REPORTED = "reported"  # the report went up (or the summary was printed): done
    COLLAPSED = "collapsed"  # an unhandled failure: the node is exiting 1

    @property
    def streamed(self) -> bool:
        """The stream has started here (a relay exists)."""
        return self not in (Phase.FORMING, Phase.COLLAPSED)


class Who(Enum):
    """What failed, seen from the node that decides."""

    LOCAL_OUTPUT = "the node's local output fails (disk full, EIO)"
    LOCAL_INPUT = "the root's input fails (or -cmd/-process exits non-zero)"
    SOURCE = "the root's input file shrinks, grows or is rewritten during the stream"
    PARENT = "the parent dies, stalls or sends nothing for -t"
    PARENT_ABORT = "the parent aborts (the tree above collapsed)"
    CUT_ABOVE = "the parent's end says the stream was cut above it"
    SHORT = "fewer bytes arrived than the parent's end says"
    CHILD = "a child dies, stalls, or a write to it fails"
    BELOW = "a node below a child fails and the child collapses"
    BAD_REPORT = "a child's report is not one"
    BAD_COUNT = "a child's byte count differs from what was sent"
    BAD_DIGEST = "a node's digest differs from the root's (-digest)"
    COMMAND = "a command fails on a node (beo exec), or has not ended when -stm_wait runs out"
    NO_JOIN = "a child does not join within -t (or each host of its list within -connf)"
    UNREACHABLE = "a child is unreachable (no route, no such name)"
    SIGNAL = "SIGINT or SIGTERM"


class Action(Enum):
    COLLAPSE = "collapse"  # fail up, abort down, exit 1 at once
    CARRY_ON = "carry on"  # record the code, go on (a branch dropped, a stream ended here)
    HEAL = "heal"  # -heal: adopt the dead child's children, resume each from its bytes
    ORPHAN = "orphan"  # -heal: wait for an ancestor to adopt this node
    RETRY = "retry"  # keep trying (-w)
    IGNORE = "ignore"  # already handled, or nothing is lost


@dataclass(frozen=True)
class Options:
    """The options that change a decision (from the command line)."""

    colrf: bool = False
    colwf: bool = False
    conrf: bool = False
    conwf: bool = False
    connf: bool = False
    wait_boot: bool = False  # -w
    heal: bool = False
    pull: bool = False  # -flow pull

    @classmethod
    def of(cls, cfg: object) -> Options:
        """From a NetteeConfig (anything with the same attribute names)."""
        get = lambda name: getattr(cfg, name)  # noqa: E731
        return cls(colrf=get("colrf"), colwf=get("colwf"), conrf=get("conrf"),
                   conwf=get("conwf"), connf=get("connf") > 0, wait_boot=get("wait_boot"),
                   heal=get("heal"), pull=get("flow") == "pull")  # fmt: skip


@dataclass(frozen=True)
class Failure:
    """What happened.  ``code``: the code a child's ``fail`` named (BELOW), or a
    byte-count code; else the code follows from ``who``.  ``no_adopter``: an
    orphan's wait for an adopter ran out (-heal)."""

    who: Who
    phase: Phase = Phase.STREAMING
    code: str = ""
    no_adopter: bool = False


@dataclass(frozen=True)
class Decision:
    """``code``: what to record (on this node, or on the child's branch; "" for
    nothing).  ``fatal``: carrying on, but this node's output (or the branch's)
    cannot be trusted: the node exits 1.  ``option``: what made the decision
    ("" for the default)."""

    action: Action
    code: str = ""
    fatal: bool = False
    option: str = ""


def _option(flag: bool, name: str, code: str, default: Action = Action.COLLAPSE) -> Decision:
    return Decision(Action.CARRY_ON, code, option=name) if flag else Decision(default, code)


def _parent(f: Failure, o: Options, aborted: bool) -> Decision:
    """The parent is gone: NRF (NWF in pull, where the parent is written to)."""
    code, flag, name = (Code.NWF, o.conwf, "-conwf") if o.pull else (Code.NRF, o.conrf, "-conrf")
    if f.phase in (Phase.REPORTED, Phase.CUT_OFF, Phase.COLLAPSED):
        return Decision(Action.IGNORE)
    if f.phase is Phase.ENDED and not aborted:
        return Decision(Action.CARRY_ON)  # the whole stream and its count arrived: nothing lost
    if f.phase is Phase.ORPHANED and not f.no_adopter:
        return Decision(Action.IGNORE)  # already waiting for an adopter
    if o.heal and not aborted and f.phase is Phase.STREAMING:
        return Decision(Action.ORPHAN, code, option="-heal")
    return _option(flag, name, code)


def _child(f: Failure, o: Options) -> Decision:
    """A branch is lost: NWF (NRF in pull, where the child is read from)."""
    if f.phase is Phase.COLLAPSED:
        return Decision(Action.IGNORE)
    code = f.code or (Code.NRF if o.pull else Code.NWF)
    if f.who is Who.CHILD and o.heal and not o.pull and f.phase.streamed:
        return Decision(Action.HEAL, code, option="-heal")
    return _option(o.conrf, "-conrf", code) if o.pull else _option(o.conwf, "-conwf", code)


def decide(f: Failure, o: Options) -> Decision:
    """The one rule book: what the node does about ``f`` under options ``o``."""
    who = f.who
    if f.phase is Phase.COLLAPSED:
        return Decision(Action.IGNORE)
    if who is Who.SIGNAL:
        return Decision(Action.COLLAPSE, Code.SIG)
    if who is Who.LOCAL_OUTPUT:
        return _option(o.colwf, "-colwf", Code.LWF)
    if who is Who.LOCAL_INPUT:
        return _option(o.colrf, "-colrf", Code.LRF)
    if who is Who.SOURCE:  # every node holds bytes of no version of the file: -colrf or not
        return Decision(Action.CARRY_ON, Code.LRF, fatal=True)
    if who in (Who.PARENT, Who.PARENT_ABORT):
        return _parent(f, o, aborted=who is Who.PARENT_ABORT)
    if who is Who.CUT_ABOVE:  # the stream was cut above: this node's copy is short
        return Decision(Action.CARRY_ON, Code.NRF, fatal=not o.conrf,
                        option="-conrf" if o.conrf else "")  # fmt: skip
    if who is Who.SHORT:
        return Decision(Action.CARRY_ON, Code.NRF, fatal=True)
    if who in (Who.CHILD, Who.BELOW):
        return _child(f, o)
    if who is Who.BAD_REPORT:
        return Decision(Action.CARRY_ON, Code.BSTAT, fatal=True)
    if who is Who.BAD_COUNT:
        return Decision(Action.CARRY_ON, Code.BBC, fatal=True)
    if who is Who.BAD_DIGEST:
        return Decision(Action.CARRY_ON, Code.BDG, fatal=True)
    if who is Who.COMMAND:  # the stream was delivered; what ran on it failed
        return Decision(Action.CARRY_ON, Code.CMDF, fatal=True)
    if who is Who.NO_JOIN:
        return _option(o.connf, "-connf", Code.NNF)
    if who is Who.UNREACHABLE:
        return Decision(Action.RETRY, Code.NNF, option="-w") if o.wait_boot else (
            Decision(Action.COLLAPSE, Code.NNF))  # fmt: skip
    raise ValueError(f"no rule for {who}")


# ---------------------------------------------------------------- the table of docs/nettee.md

# the rows of the table: a failure in the phase it usually happens in
ROWS: list[tuple[Failure, bool]] = [  # (failure, under -flow pull)
    (Failure(Who.CHILD), False),
    (Failure(Who.CHILD, Phase.FORMING), False),
    (Failure(Who.CHILD), True),
    (Failure(Who.BELOW, code="LWF"), False),
    (Failure(Who.PARENT), False),
    (Failure(Who.PARENT, Phase.FORMING), False),
    (Failure(Who.PARENT), True),
    (Failure(Who.PARENT, Phase.ENDED), False),
    (Failure(Who.PARENT, Phase.ORPHANED, no_adopter=True), False),
    (Failure(Who.PARENT_ABORT), False),
    (Failure(Who.CUT_ABOVE), False),
    (Failure(Who.SHORT), False),
    (Failure(Who.LOCAL_OUTPUT), False),
    (Failure(Who.LOCAL_INPUT), False),
    (Failure(Who.SOURCE), False),
    (Failure(Who.BAD_COUNT, Phase.REPORTED), False),
    (Failure(Who.BAD_REPORT, Phase.REPORTED), False),
    (Failure(Who.BAD_DIGEST, Phase.REPORTED), False),
    (Failure(Who.COMMAND, Phase.REPORTED), False),
    (Failure(Who.NO_JOIN, Phase.FORMING), False),
    (Failure(Who.UNREACHABLE, Phase.FORMING), False),
    (Failure(Who.SIGNAL), False),
]

SINGLE_OPTIONS = ["colrf", "colwf", "conrf", "conwf", "connf", "wait_boot", "heal"]
OPTION_NAMES = {"colrf": "-colrf", "colwf": "-colwf", "conrf": "-conrf", "conwf": "-conwf",
                "connf": "-connf", "wait_boot": "-w", "heal": "-heal"}  # fmt: skip


def every_options(pull: bool | None = None) -> list[Options]:
    """Every combination of the options (128 per flow; -heal only with push)."""
    names = [f.name for f in fields(Options) if f.name != "pull"]
    out = []
    for flows in ([pull] if pull is not None else [False, True]):
        for values in itertools.product([False, True], repeat=len(names)):
            o = Options(**dict(zip(names, values, strict=True)), pull=flows)
            if not (o.heal and o.pull):  # refused on the command line
                out.append(o)
    return out


def _words(d: Decision) -> str:
    text = {Action.COLLAPSE: "collapse", Action.CARRY_ON: "carry on", Action.HEAL: "heal",
            Action.ORPHAN: "orphan: wait for an adopter", Action.RETRY: "retry",
            Action.IGNORE: "ignore"}[d.action]  # fmt: skip
    if d.code:
        text += f" ({d.code}{', fatal' if d.fatal else ''})"
    return text


def _event(f: Failure, pull: bool) -> str:
    text = f.who.value
    if f.who is Who.BELOW:
        text += f" (its fail names {f.code})"
    if f.no_adopter:
        text = "-heal: no ancestor adopts the orphan in time"
    if f.phase is Phase.FORMING:
        text += ", while the tree forms"
    elif f.phase is Phase.ENDED:
        text += ", after the end of the stream"
    return text + (", -flow pull" if pull else "")


def markdown_table() -> str:
    """The failure table of docs/nettee.md, from :func:`decide` itself: for each
    row the default decision and every single option that changes it."""
    lines = ["| failure | default | changed by |", "|---|---|---|"]
    for failure, pull in ROWS:
        default = decide(failure, Options(pull=pull))
        changes = []
        for name in SINGLE_OPTIONS:
            if name == "heal" and pull:
                continue
            d = decide(failure, Options(pull=pull, **{name: True}))
            if d != default:
                changes.append(f"`{OPTION_NAMES[name]}`: {_words(d)}")
        lines.append(f"| {_event(failure, pull)} | {_words(default)} | "
                     f"{'; '.join(changes) or '—'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
