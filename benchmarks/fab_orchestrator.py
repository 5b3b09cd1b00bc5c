"""flateval as FAB's orchestrator against FAB's own sequential path, on the same scenarios and Policy.

* ``fab``: what FAB's orchestrator does for a submission: ``flatland-trajectory-generate-from-policy``
  on each scenario, one after another, one process each (FAB starts one container each: a process is
  the least of that cost), each trajectory re-checked and scored right after with flatland's
  `TrajectoryEvaluator` as FAB's orchestrator scores it. Timed whole.
* ``flateval``: a running ``flateval fab-worker`` (default flags: one pair per core), started once
  as FAB's orchestrator is a long-running service; timed from FAB's task sent (Celery's
  ``send_task`` on a real RabbitMQ) to the final status it posts to FAB's API (a contract server on
  loopback): agents started, scenarios played in parallel with live deadlines, trajectories
  re-checked, scores posted.

The Policy is a participant's workload of today, its own observations included
(tests/flatland_submissions/tree_policy.py: depth-2 tree observations and a small heuristic). Rounds
alternate the two paths (the machine may be shared); medians and their ratio are printed, and the
scores flateval posted are compared with FAB's path's, scenario by scenario.

    python benchmarks/fab_orchestrator.py [--rounds 3] [--preset ecml2026-debug]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fab_contract_server import FabContractServer  # noqa: E402
from tests.fab_reference import (ECML_BENCHMARK_ID, fab_sequential_scores, send_fab_task,  # noqa: E402
                                 start_fab_worker, table_for, wait_final_status)
from tests.rabbitmq_server import start_rabbitmq  # noqa: E402

TARGET = 0.6  # flateval's wall time / FAB's, with 2 workers
TOLERANCE = 1e-9


def _same_scores(posted: dict, expected: dict) -> bool:
    return posted.keys() == expected.keys() and all(
        posted[t].keys() == expected[t].keys()
        and all(abs(posted[t][s][k] - v) <= TOLERANCE for s in expected[t] for k, v in expected[t][s].items())
        for t in expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="ecml2026-debug")
    args = parser.parse_args()
    from env_worker.flatland_test_set import generate_test_set

    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    work = Path(tempfile.mkdtemp(prefix="flateval-fab-bench-"))
    work.chmod(0o755)
    test_set = work / "test_set"
    generate_test_set(test_set, args.preset, seed=42)
    table = table_for(test_set, work / "table.fab.json")
    tests = list(json.loads(table.read_text())["tests"])
    n_scenarios = sum(len(s) for s in json.loads(table.read_text())["tests"].values())
    client_id, secret = "fab-bench", uuid.uuid4().hex
    rabbit = start_rabbitmq(tls=True)
    fab = FabContractServer(client_id, secret).start()
    data = work / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    worker = start_fab_worker(rabbit.tls_url, fab, client_id, secret, test_set, table, data,
                              workers=os.cpu_count() or 1, extra_env=rabbit.client_tls())
    walls: dict[str, list[float]] = {"fab": [], "flateval": []}
    matches = []
    try:
        for round_ in range(args.rounds):
            for path in (("fab", "flateval") if round_ % 2 == 0 else ("flateval", "fab")):
                started = time.perf_counter()
                if path == "fab":
                    expected = fab_sequential_scores(test_set, table, tests, work / f"fab-{round_}", processes=True)
                else:
                    sid = str(uuid.uuid4())
                    send_fab_task(rabbit.url, ECML_BENCHMARK_ID, sid, tests)
                    status = wait_final_status(fab, sid, worker.process, worker.log, 1800)
                    if status["status"] != "SUCCESS":
                        raise SystemExit(f"flateval's evaluation failed: {status}")
                    posted = fab.scores(sid)
                walls[path].append(time.perf_counter() - started)
                print(f"round {round_ + 1} {path:9s} {walls[path][-1]:7.2f} s", flush=True)
            matches.append(_same_scores(posted, expected))
            print(f"round {round_ + 1} ratio     {walls['flateval'][-1] / walls['fab'][-1]:7.2f}", flush=True)
    finally:
        worker.stop()
        fab.stop()
        rabbit.stop()
    fab_s, flateval_s = statistics.median(walls["fab"]), statistics.median(walls["flateval"])
    ratio = flateval_s / fab_s
    print(f"\n{args.preset}: {len(tests)} tests, {n_scenarios} scenarios; {os.cpu_count()} cores; "
          f"{args.rounds} rounds interleaved; medians")
    print(f"  FAB's sequential path       {fab_s:7.2f} s")
    print(f"  flateval fab-worker ({os.cpu_count()} w) {flateval_s:7.2f} s")
    print(f"  ratio flateval / FAB        {ratio:7.2f}   (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")
    print(f"  scores equal FAB's path     {all(matches)} ({sum(matches)}/{len(matches)} rounds)")
    return 0 if all(matches) else 1


if __name__ == "__main__":
    sys.exit(main())
