"""The chaos soak, CI-sized: a seeded random schedule of faults over one evaluation on three pairs;
nothing lost, nothing counted twice, every score as an undisturbed run's except the episodes the
schedule cut, which are exactly the ones cut (benchmarks/chaos_soak.py runs the long version)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import chaos_soak  # noqa: E402

SEED = 5


def test_a_seeded_chaos_schedule_loses_and_double_counts_nothing(small_test_set, fault_report):
    report = chaos_soak.run_soak(SEED, episodes=36, pairs=3, sources=small_test_set, process_faults=5)
    chaos_soak.print_report(report)
    assert report.results == 36 and not report.lost and not report.double_counted, report
    assert not report.wrong, report.wrong
    injected = [f for f in report.faults if f.injected]
    assert len(injected) >= 3 and all(f.recovered_s is not None for f in injected), report.faults
    assert any(chaos_soak.expected_outcome(f) != "completed" for f in report.agent_faults.values())
    assert report.ok
    kinds = sorted({f.kind for f in injected})
    fault_report(f"chaos soak, seed {SEED}: 36 episodes on 3 pairs, {len(report.agent_faults)} agent faults and "
                 f"{len(injected)} others ({', '.join(kinds)})",
                 "nothing lost, nothing counted twice; the cut episodes are exactly the scheduled ones; every other "
                 "score equals direct stepping", max(f.recovered_s for f in injected))
