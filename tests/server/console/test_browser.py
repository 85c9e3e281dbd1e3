"""The console in a real browser (the OS's headless Chromium, driven by Selenium), against
a recorded run, a real simulation running during the test, a run whose rounds the test
writes, and a registry with real signed reports:
the page loads with no console error, each chart has one point per round or report, a
round that lands in the files appears with no reload, and a torn file shows its notice."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fedadapt.server.console.app import ConsoleServer
from fedadapt.server.updates.rollout import Rollouts
from tests.registry_helpers import serving
from tests.server.console.helpers import ROOT, LiveRun, build_fleet, copy_recorded_run

pytestmark = pytest.mark.integration
WAIT_S = 15  # the page polls every 2 s; a loaded CI machine gets a margin


def _errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _points(browser, run: str, chart: str, trace: int = 0) -> int | None:
    return browser.execute_script(
        "const el = document.querySelector("
        '`section.run[data-run="${arguments[0]}"] [data-chart="${arguments[1]}"]`);'
        "return el && el.data && el.data[arguments[2]] ? el.data[arguments[2]].x.length : null;",
        run,
        chart,
        trace,
    )


def _wait(browser, condition, what: str):
    return WebDriverWait(browser, WAIT_S).until(lambda _: condition(), message=what)


def _open(browser, url: str, view: str = "runs") -> None:
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(f"{url}/#{view}")
    _wait(browser, lambda: browser.execute_script("return document.body.dataset.polls"), "a poll")


def test_a_recorded_run_loads_with_no_console_error_and_one_point_per_round(browser, tmp_path):
    run = copy_recorded_run(tmp_path / "runs" / "quick")
    with open(run / "metrics.csv") as f:
        rounds = len(list(csv.DictReader(f)))
    assert rounds == 10
    with serving(ConsoleServer(tmp_path / "runs")) as url:
        _open(browser, url)
        for chart, traces in (("accuracy", 2), ("upload", 1), ("rejected", 1), ("seconds", 1)):
            for t in range(traces):
                assert _points(browser, "quick", chart, t) == rounds, (chart, t)
        head = browser.find_element(By.CSS_SELECTOR, 'section.run[data-run="quick"] .head').text
        assert "done" in head and "round 10 of 10" in head
        table = browser.find_element(By.CSS_SELECTOR, "table.comparisons").text
        assert "personalized vs local only" in table and "[-1.5, +11.7]" in table
        links = browser.find_elements(By.CSS_SELECTOR, 'section.run[data-run="quick"] .files a')
        assert {a.text for a in links} >= {"report.json", "metrics.csv", "plots/accuracy.png"}
        assert browser.find_elements(By.CSS_SELECTOR, "#notices li") == []
        assert _errors(browser) == []


def test_a_round_written_during_the_test_appears_with_no_reload(browser, tmp_path):
    """The run is written as the ServerApp writes it after every round (its own
    `write_metrics_csv`, the recorded run's real rows), at the moment the test chooses: the
    page must take a round it has already drawn a chart for, in seconds, on the same page."""
    live = LiveRun(tmp_path / "runs" / "live")
    live.round()
    live.round()
    with serving(ConsoleServer(tmp_path / "runs")) as url:
        _open(browser, url)
        assert _points(browser, "live", "accuracy") == 2
        head = browser.find_element(By.CSS_SELECTOR, 'section.run[data-run="live"] .head')
        assert "running" in head.text and f"round 2 of {live.total}" in head.text
        browser.execute_script("window.__same_page = true")  # gone if the page reloads
        n = live.round()
        _wait(browser, lambda: _points(browser, "live", "accuracy") == n, "round 3 on the chart")
        assert f"round 3 of {live.total}" in head.text
        assert browser.execute_script("return window.__same_page") is True
        assert _errors(browser) == []


@pytest.mark.slow
def test_the_page_follows_a_real_simulation_while_it_runs(browser, tmp_path):
    """`fedadapt simulate` on ci.toml without baselines (2 rounds, about a minute on two
    cores, most of it Ray starting): the page, loaded before any round, shows both rounds
    and then the finished run, on the same page."""
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["--config", "simulations/ci.toml", "--no-baselines", "--out", str(runs / "ci")]
    sim = subprocess.Popen(
        [sys.executable, "-m", "fedadapt", "simulate", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with serving(ConsoleServer(runs)) as url:
            _open(browser, url)
            assert _points(browser, "ci", "accuracy") in (None, 0)  # no round yet
            browser.execute_script("window.__same_page = true")
            WebDriverWait(browser, 300, poll_frequency=1).until(
                lambda _: sim.poll() is not None or _points(browser, "ci", "accuracy") == 2,
                message="the simulation's end or both rounds on the chart",
            )
            assert sim.poll() in (None, 0), sim.stderr.read()[-3000:]
            _wait(browser, lambda: _points(browser, "ci", "accuracy") == 2, "both rounds")
            head = browser.find_element(By.CSS_SELECTOR, 'section.run[data-run="ci"] .head')
            _wait(browser, lambda: "done" in head.text, "the finished run")
            assert "round 2 of 2" in head.text
            assert browser.execute_script("return window.__same_page") is True
            assert _errors(browser) == []
        assert sim.wait(timeout=120) == 0
    finally:
        if sim.poll() is None:
            sim.terminate()
            sim.wait(timeout=60)


def test_a_torn_or_huge_file_shows_its_notice_and_the_page_keeps_serving(browser, tmp_path):
    runs = tmp_path / "runs"
    run = copy_recorded_run(runs / "quick")
    with serving(ConsoleServer(runs)) as url:
        _open(browser, url)
        assert _points(browser, "quick", "accuracy") == 10
        text = (run / "report.json").read_text()
        (run / "report.json").write_text(text[: len(text) // 2])  # a write cut short
        metrics = (run / "metrics.csv").read_text()
        (run / "metrics.csv").write_text(metrics[:-30])  # its last line cut in half

        def notices() -> list[str]:
            return [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#notices li")]

        _wait(browser, lambda: len(notices()) == 2, "two notices")
        assert "run quick: report.json is torn or not JSON" in notices()[0]
        assert "run quick: metrics.csv: 1 torn line skipped" in notices()[1]
        assert all("\n" not in n and str(tmp_path) not in n for n in notices())
        assert _points(browser, "quick", "accuracy") == 9  # the rounds that are whole
        with open(run / "devices.json", "wb") as f:  # 17 MiB, past the cap (sparse)
            f.truncate(17 * 2**20)
        _wait(browser, lambda: any("too large" in n for n in notices()), "the size notice")
        (run / "report.json").write_text(text)  # repaired: its notice goes
        _wait(browser, lambda: not any("report.json" in n for n in notices()), "notice gone")
        assert "round 10 of 10" not in browser.find_element(By.CSS_SELECTOR, ".run .head").text
        assert _errors(browser) == []


def test_devices_and_rollouts_show_the_signed_reports_and_the_guardrail(browser, tmp_path):
    fleet = build_fleet(tmp_path)
    (tmp_path / "runs").mkdir()
    with serving(ConsoleServer(tmp_path / "runs", fleet.registry)) as url:
        _open(browser, url, "devices")
        rows = browser.find_elements(By.CSS_SELECTOR, "#devices-table tbody tr")
        assert {r.get_attribute("data-device") for r in rows} == set(fleet.devices)
        failing = browser.find_elements(By.CSS_SELECTOR, "#devices-table tr.failing")
        assert len(failing) == 1  # the device that failed 3 inferences on main
        assert browser.find_elements(By.CSS_SELECTOR, "#devices-table tr.quiet") == []

        _open(browser, url, "rollouts")
        main = browser.find_element(By.CSS_SELECTOR, 'section.channel[data-channel="main"]')
        assert "rolling out v2 to 100%" in main.text
        assert main.find_element(By.CSS_SELECTOR, ".exposed").text == str(len(fleet.devices))
        beta = browser.find_element(By.CSS_SELECTOR, 'section.channel[data-channel="beta"]')
        assert "halted; back on stable v1" in beta.text
        assert "guardrail: paired difference" in beta.find_element(By.CSS_SELECTOR, ".reason").text
        # one point per report from the second on (each from another device, all counted)
        points = browser.execute_script(
            "return [...document.querySelectorAll('section.channel')].map("
            "s => [s.dataset.channel, s.querySelector('[data-chart=interval]').data[2].x.length])"
        )
        assert dict(points) == {"main": fleet.main_reports - 1, "beta": fleet.beta_reports - 1}
        assert browser.find_elements(By.CSS_SELECTOR, ".actions button") == []  # read-only
        assert _errors(browser) == []


def test_with_actions_the_operator_halts_a_rollout_from_the_page(browser, tmp_path):
    fleet = build_fleet(tmp_path)
    (tmp_path / "runs").mkdir()
    server = ConsoleServer(tmp_path / "runs", fleet.registry, rollout_key=fleet.keys.key)
    with serving(server) as url:
        _open(browser, url, "rollouts")
        main = browser.find_element(By.CSS_SELECTOR, 'section.channel[data-channel="main"]')
        main.find_element(By.CSS_SELECTOR, "button.halt").click()
        browser.switch_to.alert.accept()
        _wait(
            browser,
            lambda: (
                "halted; back on stable v1"
                in browser.find_element(By.CSS_SELECTOR, '[data-channel="main"] .head').text
            ),
            "the halted stage",
        )
        assert _errors(browser) == []
    state = Rollouts(Path(fleet.registry)).rollout("main")
    assert state["halted"]["reason"] == "halted by operator (console)"
    assert Rollouts(fleet.registry).read_channel("main")[1].candidate is None
