"""The failure policy (beokit.nettee.policy): every combination of the
continue-on-failure options and -heal, without a process or a socket.

Each test states the man page's rule for one kind of failure in its own
words and checks :func:`decide` against it under all 128 combinations of
-colrf -colwf -conrf -conwf -connf -w -heal (with -flow push and pull), in
every phase where the failure can happen.  The real-process fault matrix
(tests/test_fault_matrix.py) checks that the node carries the decisions out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from beokit.nettee.options import parse_args
from beokit.nettee.policy import (
    Action,
    Decision,
    Failure,
    Options,
    Phase,
    Who,
    decide,
    every_options,
    markdown_table,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "nettee.md"
ALL = every_options()
LIVE = [Phase.FORMING, Phase.STREAMING, Phase.ENDED, Phase.ORPHANED, Phase.CUT_OFF,
        Phase.REPORTED]  # fmt: skip


def test_every_combination_is_enumerated() -> None:
    assert len(every_options(pull=False)) == 128
    assert len(every_options(pull=True)) == 64  # -heal with -flow pull is refused
    assert len(set(ALL)) == 192


@pytest.mark.parametrize("phase", LIVE)
def test_a_dead_child(phase: Phase) -> None:
    """-conwf carries on without the branch (-conrf in pull); -heal (push, once the
    stream has started) adopts the grandchildren instead; else the tree collapses."""
    for o in ALL:
        d = decide(Failure(Who.CHILD, phase), o)
        code = "NRF" if o.pull else "NWF"
        if o.heal and phase is not Phase.FORMING:
            assert d == Decision(Action.HEAL, code, option="-heal"), o
        elif o.conrf if o.pull else o.conwf:
            assert d == Decision(Action.CARRY_ON, code, option="-conrf" if o.pull else "-conwf")
        else:
            assert d == Decision(Action.COLLAPSE, code), o


@pytest.mark.parametrize("phase", LIVE)
def test_a_failure_below_a_child_is_never_healed(phase: Phase) -> None:
    """The child collapsed on a failure further down (its fail names another node and
    that node's code): heal does not apply, the code is the one below."""
    for o in ALL:
        d = decide(Failure(Who.BELOW, phase, code="LWF"), o)
        flag = o.conrf if o.pull else o.conwf
        assert d.action is (Action.CARRY_ON if flag else Action.COLLAPSE), o
        assert d.code == "LWF"


@pytest.mark.parametrize("aborted", [False, True])
def test_a_lost_parent(aborted: bool) -> None:
    """Mid-stream: -heal waits for an adopter (not after an abort, which is a
    collapse above), else -conrf finishes locally (-conwf in pull), else collapse."""
    who = Who.PARENT_ABORT if aborted else Who.PARENT
    for o in ALL:
        d = decide(Failure(who, Phase.STREAMING), o)
        code, flag = ("NWF", o.conwf) if o.pull else ("NRF", o.conrf)
        if o.heal and not aborted:
            assert d == Decision(Action.ORPHAN, code, option="-heal"), o
        elif flag:
            assert d.action is Action.CARRY_ON and d.code == code and not d.fatal, o
        else:
            assert d == Decision(Action.COLLAPSE, code), o


def test_a_parent_lost_while_the_tree_forms_is_never_healed() -> None:
    for o in ALL:
        d = decide(Failure(Who.PARENT, Phase.FORMING), o)
        flag = o.conwf if o.pull else o.conrf
        assert d.action is (Action.CARRY_ON if flag else Action.COLLAPSE), o


def test_a_parent_that_leaves_after_the_end_loses_nothing() -> None:
    for o in ALL:
        assert decide(Failure(Who.PARENT, Phase.ENDED), o) == Decision(Action.CARRY_ON), o
        # an abort after the end still means the tree above collapsed
        d = decide(Failure(Who.PARENT_ABORT, Phase.ENDED), o)
        assert d.action is (Action.CARRY_ON if (o.conwf if o.pull else o.conrf)
                            else Action.COLLAPSE), o  # fmt: skip


def test_an_orphan_waits_once_and_then_follows_conrf() -> None:
    for o in ALL:
        assert decide(Failure(Who.PARENT, Phase.ORPHANED), o).action is Action.IGNORE, o
        d = decide(Failure(Who.PARENT, Phase.ORPHANED, no_adopter=True), o)
        flag = o.conwf if o.pull else o.conrf
        assert d.action is (Action.CARRY_ON if flag else Action.COLLAPSE), o


@pytest.mark.parametrize("who", [Who.PARENT, Who.PARENT_ABORT])
@pytest.mark.parametrize("phase", [Phase.CUT_OFF, Phase.REPORTED, Phase.COLLAPSED])
def test_a_parent_failure_once_handled_is_ignored(who: Who, phase: Phase) -> None:
    for o in ALL:
        assert decide(Failure(who, phase), o) == Decision(Action.IGNORE), o


@pytest.mark.parametrize("who, option, code", [(Who.LOCAL_OUTPUT, "colwf", "LWF"),
                                               (Who.LOCAL_INPUT, "colrf", "LRF")])  # fmt: skip
def test_local_failures(who: Who, option: str, code: str) -> None:
    for o in ALL:
        for phase in (Phase.STREAMING, Phase.ENDED):
            d = decide(Failure(who, phase), o)
            if getattr(o, option):
                assert d == Decision(Action.CARRY_ON, code, option=f"-{option}"), o
            else:
                assert d == Decision(Action.COLLAPSE, code), o


def test_a_changed_source_is_fatal_whatever_the_options() -> None:
    for o in ALL:
        assert decide(Failure(Who.SOURCE), o) == Decision(Action.CARRY_ON, "LRF", fatal=True)


def test_a_stream_cut_above_is_fatal_unless_conrf() -> None:
    for o in ALL:
        d = decide(Failure(Who.CUT_ABOVE, Phase.ENDED), o)
        assert d.action is Action.CARRY_ON and d.code == "NRF" and d.fatal is not o.conrf, o


@pytest.mark.parametrize("who, code", [(Who.SHORT, "NRF"), (Who.BAD_COUNT, "BBC"),
                                       (Who.BAD_REPORT, "BSTAT"), (Who.BAD_DIGEST, "BDG")])  # fmt: skip
def test_untrustworthy_data_is_fatal_whatever_the_options(who: Who, code: str) -> None:
    for o in ALL:
        assert decide(Failure(who, Phase.REPORTED), o) == Decision(Action.CARRY_ON, code,
                                                                   fatal=True)  # fmt: skip


def test_formation_failures() -> None:
    """-connf drops a branch whose hosts never join; -w keeps trying an unreachable one."""
    for o in ALL:
        d = decide(Failure(Who.NO_JOIN, Phase.FORMING), o)
        assert d.action is (Action.CARRY_ON if o.connf else Action.COLLAPSE) and d.code == "NNF"
        d = decide(Failure(Who.UNREACHABLE, Phase.FORMING), o)
        assert d.action is (Action.RETRY if o.wait_boot else Action.COLLAPSE), o


def test_a_signal_always_collapses() -> None:
    for o in ALL:
        for phase in LIVE:
            assert decide(Failure(Who.SIGNAL, phase), o) == Decision(Action.COLLAPSE, "SIG")


@pytest.mark.parametrize("who", list(Who))
def test_nothing_is_decided_twice_once_collapsed(who: Who) -> None:
    for o in ALL:
        assert decide(Failure(who, Phase.COLLAPSED), o).action is Action.IGNORE


def test_every_failure_kind_has_a_rule_for_every_option_set_and_phase() -> None:
    for who in Who:
        for phase in Phase:
            for o in ALL:
                d = decide(Failure(who, phase, code="NWF"), o)
                assert isinstance(d.action, Action)
                assert d.action in (Action.IGNORE, Action.CARRY_ON) or d.code, (who, phase, o)


def test_options_from_the_command_line() -> None:
    cfg = parse_args(["-next", "a", "-conwf", "-colrf", "-connf", "2", "-w", "-heal"])
    assert Options.of(cfg) == Options(colrf=True, conwf=True, connf=True, wait_boot=True,
                                      heal=True)  # fmt: skip
    cfg = parse_args(["-flow", "pull", "-process", "cat", "-conrf"])
    assert Options.of(cfg) == Options(conrf=True, pull=True)
    assert Options.of(parse_args(["-next", "a", "-connf", "0"])) == Options()


def test_the_table_in_docs_nettee_md_is_generated_from_the_policy() -> None:
    """docs/nettee.md holds ``python -m beokit.nettee.policy``'s table, as it is."""
    text = DOC.read_text()
    assert markdown_table() in text, (
        "docs/nettee.md's failure table differs from the policy; regenerate it with "
        "python -m beokit.nettee.policy")
