"""The fault matrix (bench/fault_matrix.py): real faults in real five-node chains.

Each case starts root + 4 receivers on 127.0.0.1-5, feeds a 16 MiB stream
through the root's stdin at a controlled rate, injects one fault (SIGKILL,
SIGSTOP, /dev/full, a full tmpfs, a reset input socket, a host that never
starts) and checks the invariant -- every receiver holds byte-identical output
or is named in a failure report, never a silent short file -- and the case's
expected outcome (exit statuses, codes the root names, prompt collapse).
Cases that show a bug in nettee are strict xfails whose reason starts "BUG:".
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fault_matrix.py"
_spec = importlib.util.spec_from_file_location("fault_matrix", BENCH)
assert _spec is not None and _spec.loader is not None
fm = importlib.util.module_from_spec(_spec)
sys.modules["fault_matrix"] = fm
_spec.loader.exec_module(fm)

pytestmark = pytest.mark.slow

SIZE = 16 * fm.MiB  # small and quick; the trigger for "during" is 4 MiB at the tip
BOUND = 6.0  # seconds after the fault for every process (-t 3 and -stall 2 fit in it)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fm.make_source(tmp_path_factory.mktemp("fault-matrix") / "source.bin", SIZE)


def _param(case: fm.Case):  # a pytest ParameterSet
    exp = fm.EXPECT[case.id]
    marks = []
    if exp.bug:
        marks.append(pytest.mark.xfail(strict=True, reason=exp.bug))
    if case.fault == "lwftmpfs":
        marks.append(pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs"))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in fm.CASES])
def test_fault_case(case: fm.Case, stream: Path, tmp_path: Path) -> None:
    out = fm.run_case(case, fm.Options(source=stream, size=SIZE, bound=BOUND), tmp_path)
    table = fm.render([fm.row(out)], markdown=False)
    assert not out.violations, f"silent short or corrupt output:\n{table}"
    diff = fm.check_expected(out, fm.EXPECT[case.id])
    assert not diff, "\n".join(diff) + f"\n{table}"


def test_the_matrix_covers_every_fault_under_default_and_all() -> None:
    ids = {c.id for c in fm.CASES}
    assert ids == set(fm.EXPECT), "every case has exactly one expectation"
    faults = {(c.fault, c.victim, c.when) for c in fm.CASES if c.fault != "none"}
    for fault, victim, when in faults:
        sets = {c.optset for c in fm.CASES if (c.fault, c.victim, c.when) == (fault, victim, when)}
        assert {"default", "all"} <= sets, (fault, victim, when)
    for when in ("during", "end"):
        for victim in (2, 3, 5):
            sets = {
                c.optset for c in fm.CASES if (c.fault, c.victim, c.when) == ("kill", victim, when)
            }
            assert {"conwf", "conrf"} <= sets
    assert {c.optset for c in fm.CASES if c.fault == "lrf"} >= {"colrf"}
    assert {c.optset for c in fm.CASES if c.fault == "lwf"} >= {"colwf"}
    assert {c.optset for c in fm.CASES if c.when == "before"} >= {"connf"}
    assert all(e.bug.startswith("BUG:") for e in fm.EXPECT.values() if e.bug)


def test_named_by_root_reads_report_and_log_lines() -> None:
    report = {"status": "ok", "nodes": [{"name": "root", "codes": []},
                                        {"name": "n3", "codes": ["NWF"]},
                                        {"name": "n4", "codes": ["BSTAT"]}]}  # fmt: skip
    log = "\n".join([
        "nettee: Failures detected in child 0 [n2]: NONE",
        "nettee: n5: network write failure (NWF): connection lost",
        "nettee: Failures detected in child 0 [n3]: NWF (n3: lost); -conwf: carrying on",
        "nettee: node 127.0.0.9: NNF (none of [127.0.0.9,127.0.0.8] joined)",
        "nettee: node n2: 16777216 bytes in, 16777216 out, 0.72 s, NONE",
    ])  # fmt: skip
    named = fm.named_by_root(report, log)
    assert named == {"n3": {"NWF"}, "n4": {"BSTAT"}, "n5": {"NWF"}, "127.0.0.9": {"NNF"}}
