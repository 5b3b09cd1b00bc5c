"""`flateval fab-worker` as flatland-benchmarks' (FAB's) orchestrator, with real parts: RabbitMQ
(Debian's rabbitmq-server) and Celery carry FAB's task as its backend sends it; fab-clientlib makes
the real requests to a contract server that checks each against FAB's own OpenAPI document
(tests/fab_contract_server.py); the scores must equal FAB's own path (flatland's policy runner, then
flatland's TrajectoryEvaluator as FAB's orchestrator scores) for the same policy and scenarios."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

pytest.importorskip("celery", reason="celery is not installed (pip install -e '.[fab]')")
pytest.importorskip("fab_clientlib", reason="fab-clientlib is not installed (pip install -e '.[fab]')")

from tests.fab_contract_server import FabContractServer  # noqa: E402
from tests.fab_reference import (AGENT, ECML_BENCHMARK_ID, fab_sequential_scores, send_fab_task,  # noqa: E402
                                 start_fab_worker, table_for, wait_final_status)
from tests.rabbitmq_server import RabbitUnavailable, start_rabbitmq  # noqa: E402
from tests.test_agent_image import engine, on_engine, policy_image  # noqa: E402,F401 (its Policy image, reused)

SLOW_POLICY = """
import time
from flatland.core.policy import Policy
from flatland.envs.rail_env_action import RailEnvActions

class SlowForwardPolicy(Policy):
    def act_many(self, handles, observations, **kwargs):
        time.sleep(0.05)  # 50 ms a step: slower than the scenario's time limit allows
        return {handle: RailEnvActions.MOVE_FORWARD for handle in handles}
"""
CLIENT_ID, CLIENT_SECRET = "fab-client-credentials", uuid.uuid4().hex
TASK_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def rabbitmq():
    try:
        server = start_rabbitmq(tls=True)  # FAB's: the backend sends on AMQP, orchestrators consume on AMQPS
    except RabbitUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fab():
    server = FabContractServer(CLIENT_ID, CLIENT_SECRET).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ecml_debug_set(tmp_path_factory) -> Path:
    from env_worker.flatland_test_set import generate_test_set

    out = tmp_path_factory.mktemp("ecml2026-debug")
    generate_test_set(out, "ecml2026-debug", seed=42)
    out.chmod(0o755)
    return out


@pytest.fixture(scope="module")
def scenario_table(ecml_debug_set, tmp_path_factory) -> Path:
    return table_for(ecml_debug_set, tmp_path_factory.mktemp("table") / "ecml2026-debug.fab.json")


def first_tests(table: Path, count: int) -> list[str]:
    return list(json.loads(table.read_text())["tests"])[:count]


@pytest.fixture(scope="module")
def fab_worker(rabbitmq, fab, ecml_debug_set, scenario_table, tmp_path_factory):
    data = tmp_path_factory.mktemp("fab-data")
    data.chmod(0o777)
    worker = start_fab_worker(rabbitmq.tls_url, fab, CLIENT_ID, CLIENT_SECRET, ecml_debug_set, scenario_table, data,
                              extra_env=rabbitmq.client_tls())
    yield worker
    worker.stop()


def test_a_fab_task_is_evaluated_in_parallel_and_scores_as_fabs_own_path(fab_worker, rabbitmq, fab, ecml_debug_set,
                                                                         scenario_table, tmp_path):
    from flateval.fab_orchestrator import is_submission_id

    sid, tests = str(uuid.uuid4()), first_tests(scenario_table, 2)
    send_fab_task(rabbitmq.url, ECML_BENCHMARK_ID, sid, tests)
    assert wait_final_status(fab, sid, fab_worker.process, fab_worker.log, TASK_TIMEOUT_S) == {"status": "SUCCESS"}
    assert fab.violations == []
    statuses = fab.statuses(sid)
    assert statuses[0] == {"status": "STARTED"}
    scenarios = {s: (t, f) for t, ss in json.loads(scenario_table.read_text())["tests"].items() if t in tests
                 for s, f in ss.items()}
    for scenario_id, (test_id, env_file) in scenarios.items():
        assert {"status": "STARTED", "message": f"Run evaluation env_path={env_file} test {test_id} - "
                                                f"scenario {scenario_id}"} in statuses
    posted = fab.scores(sid)
    assert {s for t in posted.values() for s in t} == set(scenarios)
    assert all(len(r.body["data"]) == 1 for r in fab.results(sid))  # one request per scenario, as FAB's

    expected = fab_sequential_scores(ecml_debug_set, scenario_table, tests, tmp_path / "fab")
    assert_same_scores(posted, expected)

    assert len(recorded_by(fab_worker.data, sid, scenario_table, tests)) == 2, "the 2 pairs did not share the work"
    assert all(is_submission_id(p.name) for p in fab_worker.data.iterdir())  # flateval's staging is gone


def recorded_by(data: Path, sid: str, table: Path, tests: list[str]) -> set[str]:
    """Every scenario of `tests` recorded in FAB's layout and replayed by flatland's TrajectoryEvaluator;
    the workers that recorded them."""
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    from core.challenge import load_challenge
    from flateval.fab_orchestrator import DEFAULT_CHALLENGE, rewards_object

    rewards = rewards_object(load_challenge(DEFAULT_CHALLENGE).phase(None).scoring.rewards)
    workers = set()
    for test_id, scenarios in json.loads(table.read_text())["tests"].items():
        for scenario_id in scenarios if test_id in tests else ():
            folder = data / sid / test_id / scenario_id
            assert len(list((folder / "event_logs").glob("*.tsv"))) == 4
            assert (folder / "serialised_state" / f"{scenario_id}.pkl").is_file()
            TrajectoryEvaluator(Trajectory.load_existing(data_dir=folder, ep_id=scenario_id)).evaluate(
                tqdm_kwargs={"disable": True}, rewards=rewards)
            workers.add(json.loads((folder / "manifest.json").read_text())["worker"])
    return workers


def assert_same_scores(posted: dict, expected: dict) -> None:
    """Scenario by scenario, naming the first that differs."""
    assert posted.keys() == expected.keys()
    for test_id, by_scenario in expected.items():
        assert posted[test_id].keys() == by_scenario.keys()
        for scenario_id, scores in by_scenario.items():
            assert posted[test_id][scenario_id] == pytest.approx(scores, abs=1e-9), (test_id, scenario_id)


@pytest.mark.parametrize("tests, image, message", [
    (None, "img:1", "Failed running submission_id={sid},tests=None as not tests passed."),
    (["00000000-0000-4000-8000-000000000000"], "img:1",
     f"test 00000000-0000-4000-8000-000000000000 is not a test of benchmark {ECML_BENCHMARK_ID}"),
    ("39ae35d8-4b0f-467f-9ec4-ee19c3558c7f", "img:1",
     "tests must be a list of test ids, got '39ae35d8-4b0f-467f-9ec4-ee19c3558c7f'"),
    (["39ae35d8-4b0f-467f-9ec4-ee19c3558c7f"], "--privileged",
     "submission_data_url '--privileged' is not an image reference"),
])
def test_a_task_fab_cannot_run_is_a_failure_with_its_cause(fab_worker, rabbitmq, fab, tests, image, message):
    sid = str(uuid.uuid4())
    send_fab_task(rabbitmq.url, ECML_BENCHMARK_ID, sid, tests, image=image)
    status = wait_final_status(fab, sid, fab_worker.process, fab_worker.log, TASK_TIMEOUT_S)
    assert status == {"status": "FAILURE", "message": message.format(sid=sid)}
    assert fab.statuses(sid)[0] == {"status": "STARTED"} and fab.results(sid) == []
    assert fab.violations == []


def orchestrator(fab, test_set: Path, table: Path, data: Path, **host):
    """FAB's orchestrator contract in this process (no Celery): for the rules whose cause FAB is told."""
    from core.fab_scenarios import load_fab_scenarios
    from flateval.fab_api import FabApi
    from flateval.fab_orchestrator import FabHost, FabOrchestrator

    settings = FabHost(test_set=str(test_set), scenarios=load_fab_scenarios(str(table)), data_dir=str(data),
                       **{"workers": 2, "agent_command": AGENT, **host})
    return FabOrchestrator(settings, FabApi(fab.url, CLIENT_ID, CLIENT_SECRET, fab.token_url))


def test_the_stop_rule_posts_the_scores_so_far_then_a_failure_in_fabs_words(fab, ecml_debug_set, scenario_table,
                                                                             tmp_path, monkeypatch):
    from flateval.fab_orchestrator import FabTask

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    sid, tests = str(uuid.uuid4()), first_tests(scenario_table, 2)
    results, cause = orchestrator(fab, ecml_debug_set, scenario_table, tmp_path,
                                  percentage_complete_threshold=1.01).run(FabTask(sid, "image", tests))
    table = json.loads(scenario_table.read_text())["tests"]
    assert set(results[tests[0]]) == set(table[tests[0]]) and results[tests[1]] == {}
    mean = sum(s["percentage_complete"] for s in results[tests[0]].values()) / len(table[tests[0]])
    assert cause == (f"The mean percentage of done agents during the last test {tests[0]} ({len(table[tests[0]])} "
                     f"environments) was too low: {mean} < 1.01")
    assert fab.statuses(sid)[-1] == {"status": "FAILURE", "message": cause}
    assert fab.scores(sid) == {tests[0]: results[tests[0]]}
    assert fab.violations == []


def test_a_scenario_past_its_time_limit_is_a_failure_naming_it(fab, ecml_debug_set, scenario_table, tmp_path,
                                                               monkeypatch):
    from flateval.fab_orchestrator import FabTask

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    sid, tests = str(uuid.uuid4()), first_tests(scenario_table, 1)
    policies = tmp_path / "policies"  # not in the data dir: the sandbox hides that from the agent
    policies.mkdir(mode=0o755)
    (policies / "slow_policy.py").write_text(SLOW_POLICY)
    slow = AGENT.replace("tree_policy.ClosestBranchPolicy", "slow_policy.SlowForwardPolicy").replace(
        "PYTHONPATH=", f"PYTHONPATH={policies}:")
    results, cause = orchestrator(fab, ecml_debug_set, scenario_table, tmp_path / "data", running_time_limit=0.5,
                                  agent_command=slow).run(FabTask(sid, "image", tests))
    assert results == {tests[0]: {}}
    assert cause.startswith(f"The evaluation of test_id={tests[0]}, scenario_id=") and "failed: timeout" in cause
    assert fab.statuses(sid)[-1] == {"status": "FAILURE", "message": cause}
    assert fab.violations == []


@on_engine
def test_the_submission_image_is_the_agent_and_scores_as_fabs_own_path(policy_image, rabbitmq, fab, ecml_debug_set,
                                                                       scenario_table, tmp_path):
    """No --agent-command: each pair's agent is a container of the image FAB names (the f3-starter-kit
    shaped Policy image of tests/test_agent_image.py), its Policy read from POLICY / OBS_BUILDER."""
    queue = str(uuid.uuid4())  # a benchmark of its own: the module's worker takes the other queue
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    worker = start_fab_worker(rabbitmq.tls_url, fab, CLIENT_ID, CLIENT_SECRET, ecml_debug_set, scenario_table, data,
                              agent=None, benchmark_id=queue, extra_env=rabbitmq.client_tls())
    try:
        sid, tests = str(uuid.uuid4()), first_tests(scenario_table, 2)
        send_fab_task(rabbitmq.url, queue, sid, tests, image=policy_image)
        assert wait_final_status(fab, sid, worker.process, worker.log, TASK_TIMEOUT_S) == {"status": "SUCCESS"}
    finally:
        worker.stop()
    line = next(line for line in worker.log.read_text(errors="replace").splitlines() if "sandbox: container" in line)
    assert policy_image in line, line
    assert_same_scores(fab.scores(sid), fab_sequential_scores(ecml_debug_set, scenario_table, tests, tmp_path / "fab"))
    assert len(recorded_by(data, sid, scenario_table, tests)) == 2, "the 2 containers did not share the work"
    assert fab.violations == []


def test_the_contract_server_refuses_what_fabs_document_does_not_allow(fab):
    """The double is only as good as its checks: a status FAB does not know, a body of the wrong
    shape, a request without the token and an operation FAB does not have are each refused and noted."""
    import urllib.error
    import urllib.request

    sid, before = str(uuid.uuid4()), len(fab.violations)
    token = fab.handle("POST", "/token", {"Content-Type": "application/x-www-form-urlencoded"},
                       f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}".encode())
    bearer = {"Content-Type": "application/json", "Authorization": f"Bearer {token[1]['access_token']}"}
    bad = [("POST", f"/submissions/{sid}/statuses", bearer, {"status": "DONE"}),
           ("POST", f"/results/submissions/{sid}/tests/{uuid.uuid4()}", bearer, {"data": [{"scores": {"x": "high"}}]}),
           ("POST", f"/submissions/{sid}/statuses", {"Content-Type": "application/json"}, {"status": "STARTED"}),
           ("POST", "/submissions/not-a-uuid/statuses", bearer, {"status": "STARTED"}),
           ("DELETE", f"/submissions/{sid}", bearer, None)]
    for method, path, headers, body in bad:
        request = urllib.request.Request(fab.url + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
    assert len(fab.violations) == before + len(bad)
    del fab.violations[before:]  # noted, and not the worker's


def test_only_a_uuid_is_a_submission_id():
    """The task id names the submission's folder: FAB's ids are UUIDs, nothing else passes."""
    from flateval.fab_orchestrator import is_submission_id

    assert is_submission_id(str(uuid.uuid4()))
    assert not any(is_submission_id(text) for text in ("../../etc", "", "0" * 32, f"{uuid.uuid4()}/x", None))


def test_agents_in_the_local_sandbox_see_neither_the_scenarios_nor_any_submission_s_recordings(
        ecml_debug_set, scenario_table, tmp_path):
    """The whole data dir is the record dir: the sandbox hides it (and the test set) from every agent."""
    from core.fab_scenarios import load_fab_scenarios
    from flateval.fab_orchestrator import FabHost, plan_task
    from flateval.local_cluster import private_paths

    table = load_fab_scenarios(str(scenario_table))
    host = FabHost(test_set=str(ecml_debug_set), scenarios=table, data_dir=str(tmp_path), agent_command=AGENT)
    plan = plan_task(table.for_tests(first_tests(scenario_table, 1)), host, tmp_path)
    assert set(private_paths(plan)) == {str(ecml_debug_set.resolve()), str(tmp_path.resolve())}
