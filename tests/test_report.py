"""`flateval report` and `flateval run --report`, looked at in a real browser.

A real local evaluation (a real agent that hangs on one episode and raises on another, a corrupt env
file) is rendered, opened in headless Chromium, and checked for what a person sees: the score, one
grid cell per episode with its outcome, a link that lands on the episode's detail, plots that drew,
no console error, no request leaving the file, nothing wider than a phone's screen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from report import render_report
from tests.test_run import flateval

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

FLAKY_AGENT = """
import time
from agent_bridge import serve
from agent_bridge.examples.shortest_path import ShortestPath

class Flaky(ShortestPath):
    '''Shortest paths, except: hangs in Test_0/Level_1 at step 5, raises in Test_1/Level_0 at step 3.'''
    def reset(self, info):
        self.env_file = info["env_file"]
        super().reset(info)
    def act(self, observations, info):
        if self.env_file == "Test_0/Level_1.pkl" and info["step"] == 5:
            time.sleep(3600)
        if self.env_file == "Test_1/Level_0.pkl" and info["step"] == 3:
            raise RuntimeError("policy exploded on purpose")
        return super().act(observations, info)

serve(Flaky())
"""

EXPECTED = {  # env file -> (outcome, the symbol its grid cell shows)
    "Test_0/Level_0.pkl": ("completed", "\u2713"),
    "Test_0/Level_1.pkl": ("timeout", "\u25F7"),
    "Test_1/Level_0.pkl": ("agent_error", "\u2717"),
    "Test_1/Level_1.pkl": ("completed", "\u2713"),
    "Test_2/Level_0.pkl": ("env_error", "\u26A0"),
}


def chromium_path() -> str | None:
    for candidate in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def evaluation(small_test_set, redis_url, tmp_path_factory) -> dict[str, Any]:
    """`flateval run --output --report` on 5 envs: 2 completed, a timeout, an agent error, an env error.
    On the session's Redis, so the submission can be reported on by its id too."""
    root = tmp_path_factory.mktemp("report")
    root.chmod(0o777)  # the sandboxed agents run as a user of their own (see tests/conftest.py)
    test_set = root / "set"
    shutil.copytree(small_test_set, test_set)
    (test_set / "Test_2").mkdir()
    (test_set / "Test_2" / "Level_0.pkl").write_bytes(b"not a pickle at all")
    agent = root / "flaky_agent.py"
    agent.write_text(FLAKY_AGENT)
    results, page = root / "results.json", root / "report.html"
    done = flateval("run", "--agent", f"{sys.executable} {agent}", "--test-set", str(test_set), "--workers", "2",
                    "--step-timeout", "0.5", "--redis", redis_url, "--output", str(results), "--report", str(page))
    assert done.returncode == 0, done.stderr
    assert f"report written to {page}" in done.stderr
    return {"root": root, "results": results, "page": page, "document": json.loads(results.read_text())}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium to look at the report with: apt-get install chromium (Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=BROWSER_ARGS)
        yield browser
        browser.close()


class Visit:
    """A page opened on a file, with every console error, page error and requested URL recorded."""

    def __init__(self, browser: Any, path: Path, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.context.route(re.compile(r"^(?!file:|data:)"), lambda route: route.abort())  # recorded, never sent
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def close(self) -> None:
        self.context.close()

    def check_self_contained(self) -> None:
        assert self.errors == []
        assert self.requests and all(url.startswith(("file://", "data:")) for url in self.requests), self.requests


@pytest.fixture
def visit(browser) -> Iterator[Any]:
    opened: list[Visit] = []

    def _visit(path: Path, width: int = 1280) -> Visit:
        opened.append(Visit(browser, path, width))
        return opened[-1]

    yield _visit
    for visit in opened:
        visit.close()


# ---------------------------------------------------------------------------- the evaluation itself
def test_the_evaluation_has_every_outcome_and_response_percentiles(evaluation):
    episodes = {e["env_file"]: e for e in evaluation["document"]["episodes"]}
    assert {f: e["outcome"] for f, e in episodes.items()} == {f: o for f, (o, _) in EXPECTED.items()}
    response = episodes["Test_0/Level_0.pkl"]["agent_response"]
    assert {"count", "mean_s", "max_s", "planning_s", "p50_s", "p95_s"} <= set(response)
    assert 0 < response["p50_s"] <= response["p95_s"] <= response["max_s"]


# ---------------------------------------------------------------------------- what a person sees
def test_report_shows_score_grid_details_and_plots(evaluation, visit):
    document = evaluation["document"]
    seen = visit(evaluation["page"])
    page = seen.page

    score = page.locator(".card.primary .value")
    assert score.is_visible() and score.inner_text() == f"{document['score']['mean_normalized_return']:.4f}"
    assert page.locator(".status-line").inner_text().strip().endswith("finished")
    assert "50.0 %" in page.locator(".cards").inner_text()  # 2 of 4 scored episodes brought every train home
    assert page.locator(".limits div", has_text="Step limit").locator("dd").inner_text() == "500 ms"

    cells = page.locator("table.grid td.cell[data-outcome]")
    assert cells.count() == len(document["episodes"]) == len(EXPECTED)
    for env_file, (outcome, symbol) in EXPECTED.items():
        test, level = (int(part.split("_")[1]) for part in env_file.removesuffix(".pkl").split("/"))
        row = page.locator("table.grid tbody tr").filter(has=page.get_by_role("rowheader", name=f"Test {test}",
                                                                              exact=True))
        cell = row.locator("td").nth(level)  # the grid's columns are levels 0, 1, ...
        assert cell.get_attribute("data-outcome") == outcome
        text = cell.inner_text()
        assert symbol in text and cell.is_visible()
        if outcome in ("timeout", "agent_error"):
            assert "-1.000" in text

    timeout_link = page.locator('td.cell[data-outcome="timeout"] a')
    target = timeout_link.get_attribute("href")
    timeout_link.click()
    assert page.url.endswith(target)
    detail = page.locator(target)
    assert page.evaluate("document.querySelector(':target').id") == target[1:]
    assert detail.is_visible() and _in_viewport(page, target)
    assert "no reply to 'step' within 0.5 s (step 5)" in detail.inner_text()
    assert "Missed reply" in detail.inner_text()

    error_detail = page.locator(page.locator('td.cell[data-outcome="agent_error"] a').get_attribute("href"))
    assert "policy exploded on purpose" in error_detail.locator(".error").inner_text()
    assert "RuntimeError: policy exploded on purpose" in error_detail.locator("details.log pre").inner_text()
    assert "Step p95" in error_detail.locator("table.response").inner_text()

    assert all(width > 600 for width in _check_plots(page, 3))  # the wide drawings
    seen.check_self_contained()


def test_report_fits_a_phone_screen(evaluation, visit):
    seen = visit(evaluation["page"], width=375)
    page = seen.page
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.locator(".card.primary").bounding_box()["width"] <= 375
    assert all(width < 500 for width in _check_plots(page, 3))  # the <picture> picked the narrow drawings
    assert all(page.locator("figure.plot img").nth(i).bounding_box()["width"] <= 375 for i in range(3))
    seen.check_self_contained()


def test_leaderboard_and_embedded_replay(evaluation, visit):
    """Two results files: a leaderboard row each; a GIF replay recorded beside the results is embedded."""
    from PIL import Image

    root = evaluation["root"]
    replays = root / "replays"
    replays.mkdir(exist_ok=True)
    frames = [Image.new("RGB", (48, 32), colour) for colour in ("#009e73", "#e69f00", "#d55e00")]
    frames[0].save(replays / "t0l0.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    (replays / "t0l0.json").write_text("[]\n")
    recorded = json.loads(evaluation["results"].read_text())
    recorded["name"] = "with replay"
    recorded["episodes"][0].update(video="replays/t0l0.gif", trajectory="replays/t0l0.json")
    second = root / "recorded.json"
    second.write_text(json.dumps(recorded))
    board = root / "board.html"

    done = flateval("report", str(evaluation["results"]), str(second), "--output", str(board))
    assert done.returncode == 0, done.stderr
    seen = visit(board)
    page = seen.page
    rows = page.locator("table.board tbody tr")
    assert rows.count() == 2
    names = rows.locator("th").all_inner_texts()
    assert any("with replay" in name for name in names)
    assert any(evaluation["document"]["submission_id"] in name for name in names)
    assert page.locator("table.grid td.cell[data-outcome]").count() == 2 * len(EXPECTED)

    replay = page.locator("figure.replay img")
    assert replay.count() == 1
    assert replay.get_attribute("src").startswith("data:image/gif;base64,")
    assert page.evaluate("(img) => img.complete && img.naturalWidth", replay.element_handle()) == 48
    link = page.locator(".recordings a", has_text="replays/t0l0.json")
    assert link.get_attribute("href") == "replays/t0l0.json"
    _check_plots(page, 6)
    seen.check_self_contained()


def test_gymnasium_report_is_one_row_without_completion(visit, tmp_path):
    pytest.importorskip("gymnasium")
    agent = Path(__file__).resolve().parent.parent / "examples" / "cartpole" / "agent.py"
    results, page_file = tmp_path / "results.json", tmp_path / "report.html"
    done = flateval("run", "--env", "gymnasium:CartPole-v1", "--episodes", "3", "--seed", "7", "--workers", "1",
                    "--agent", f"{sys.executable} {agent}", "--output", str(results), "--report", str(page_file))
    assert done.returncode == 0, done.stderr
    seen = visit(page_file)
    page = seen.page
    assert page.locator("table.grid tbody tr").count() == 1
    assert page.locator("table.grid td.cell[data-outcome]").count() == 3
    assert page.locator("table.grid thead th").all_inner_texts()[1:] == ["seed 7", "seed 8", "seed 9"]
    cards = page.locator(".cards").inner_text()
    assert "percentage complete" not in cards.lower() and "Mean return" in cards
    _check_plots(page, 3)
    seen.check_self_contained()


# ---------------------------------------------------------------------------- without a browser
def test_the_page_is_the_same_every_time(evaluation):
    document = evaluation["document"]
    first = render_report([document], [evaluation["root"]])
    assert first == render_report([document], [evaluation["root"]])
    assert "<script" not in first and "http://" not in first and "https://" not in first


def test_report_errors_are_one_line(tmp_path):
    (tmp_path / "other.json").write_text('{"episodes": 3}')
    (tmp_path / "broken.json").write_text("{")
    cases = {
        f"{tmp_path}/other.json": f"{tmp_path}/other.json: not a flateval results document (no 'episodes' list)",
        f"{tmp_path}/broken.json": f"{tmp_path}/broken.json is not JSON: Expecting property name enclosed in double "
                                   f"quotes at line 1",
        f"{tmp_path}/missing.json": f"cannot read {tmp_path}/missing.json: No such file or directory",
        "20260101-000000-abcdef": "20260101-000000-abcdef is not a file; for a submission id give --redis URL or set "
                                  "FLATEVAL_REDIS_URL",
    }
    for source, line in cases.items():
        done = flateval("report", source, "--output", str(tmp_path / "r.html"), env={"FLATEVAL_REDIS_URL": ""})
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"flateval: {line}"], done.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_on_a_stored_submission(redis_url, evaluation, tmp_path):
    """A SUBMISSION_ID is read from Redis, as `flateval results` reads it: the same page as from its file."""
    sid = evaluation["document"]["submission_id"]
    page_file = tmp_path / "stored.html"
    done = flateval("report", sid, "--redis", redis_url, "--output", str(page_file))
    assert done.returncode == 0, done.stderr
    text = page_file.read_text()
    assert text.count('data-outcome="') == len(EXPECTED) and f">{sid}</h1>" in text
    missing = flateval("report", "nope-id", "--redis", redis_url)
    assert missing.returncode == 1 and missing.stderr.strip() == "flateval: no submission nope-id"


# ---------------------------------------------------------------------------- helpers
def _check_plots(page: Any, expected: int) -> list[int]:
    """Every plot drew: a decoded, non-empty image with a size on the page and alt text. Returns the
    natural widths of the drawings shown (they tell the wide drawing from the phone's)."""
    images = page.locator("figure.plot img")
    assert images.count() == expected
    drawn = []
    for i in range(expected):
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        natural = page.evaluate("(img) => img.complete ? [img.naturalWidth, img.naturalHeight] : null",
                                image.element_handle())
        box = image.bounding_box()
        assert natural and natural[0] > 0 and natural[1] > 0
        assert box["width"] > 100 and box["height"] > 50
        assert len(image.get_attribute("alt")) > 20
        drawn.append(natural[0])
    return drawn


def _in_viewport(page: Any, selector: str) -> bool:
    return page.evaluate("""(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                                       return r.top >= -1 && r.top < window.innerHeight; }""", selector)
