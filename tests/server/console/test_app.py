"""The console's server over real HTTP: who may read (the operator token, checked on every
request), who may act (actions on, same origin), which files it serves, and that bad files
become notices while it keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from fedadapt.errors import FedAdaptError
from fedadapt.server.console.app import ConsoleServer
from fedadapt.server.updates.rollout import Rollouts
from tests.registry_helpers import serving
from tests.server.console.helpers import build_fleet, copy_recorded_run

TOKEN = "s3cret-operator-token-0123"
ACT = {"X-Fedadapt-Console": "1", "Content-Type": "application/json"}


@pytest.fixture
def runs(tmp_path):
    copy_recorded_run(tmp_path / "runs" / "quick")
    return tmp_path / "runs"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_a_bind_beyond_loopback_needs_the_token(runs, host):
    with pytest.raises(FedAdaptError, match=r"beyond loopback.*needs an operator token"):
        ConsoleServer(runs, host=host)


def test_a_weak_token_is_refused(runs):
    with pytest.raises(FedAdaptError, match="at least 16 characters"):
        ConsoleServer(runs, token="short")
    with pytest.raises(FedAdaptError, match="only letters, digits"):
        ConsoleServer(runs, token="a token; with=odd chars")


def test_with_a_token_every_request_needs_it(runs):
    with serving(ConsoleServer(runs, token=TOKEN)) as url:
        for path in (
            "/",
            "/api/state",
            "/static/plotly.min.js",
            "/files?run=quick&name=report.json",
        ):
            assert httpx.get(url + path).status_code == 401, path
        assert (
            httpx.get(url + "/api/state", headers={"Cookie": "fedadapt_console=x"}).status_code
            == 401
        )
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(url + "/api/state", headers=bearer).status_code == 200
        wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
        assert httpx.get(url + "/api/state", headers=wrong).status_code == 401
        # once in the query, traded for an HttpOnly cookie and dropped from the address
        r = httpx.get(url + f"/?token={TOKEN}")
        assert r.status_code == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with httpx.Client(base_url=url, cookies=r.cookies) as client:
            assert client.get("/api/state").json()["runs"][0]["id"] == "quick"
            assert client.post("/api/rollouts/main/halt", headers=ACT).status_code == 403


def test_without_a_token_only_a_loopback_host_name_is_answered(runs):
    """A page on another domain, resolved to 127.0.0.1 (DNS rebinding), read the fleet."""
    with serving(ConsoleServer(runs)) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]"):
            assert httpx.get(url + "/api/state", headers={"Host": host}).status_code == 200
        r = httpx.get(url + "/api/state", headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 403 and "loopback host name" in r.text


def test_only_a_runs_own_records_are_served(runs):
    device_data = runs / "deploy" / "device-1" / "data"
    device_data.mkdir(parents=True)
    (device_data / "mine.jsonl").write_text('{"text": "private", "label": 1}\n')
    (runs / "deploy" / "devices.json").write_text('{"devices": []}')
    with serving(ConsoleServer(runs)) as url:
        r = httpx.get(url + "/files", params={"run": "quick", "name": "metrics.csv"})
        assert r.status_code == 200 and r.text.startswith("round,clients,")
        for run, name in (
            ("quick", "../quick/report.json"),
            ("quick", "/etc/passwd"),
            ("deploy", "device-1/data/mine.jsonl"),
            ("nope", "report.json"),
        ):
            r = httpx.get(url + "/files", params={"run": run, "name": name})
            assert r.status_code == 404 and "private" not in r.text, (run, name)
        state = httpx.get(url + "/api/state").text
        assert "device-1" not in state and str(runs) not in state


def test_bad_files_become_notices_and_the_server_keeps_serving(runs):
    quick = runs / "quick"
    (quick / "config.json").write_text('{"rounds": 10, "seed"')  # torn
    (quick / "metrics.csv").write_bytes(b"round,clients\n\xff\xfe,\x00\n1,2,3,4\n")  # garbage
    with open(quick / "report.json", "wb") as f:
        f.truncate(20 * 2**20)  # huge
    (runs / "other").mkdir()
    (runs / "other" / "devices.json").write_text("[1, 2")
    with serving(ConsoleServer(runs)) as url:
        for _ in range(2):  # the second answer comes from the cache: the same
            r = httpx.get(url + "/api/state")
            assert r.status_code == 200
            notices = [n for run in r.json()["runs"] for n in run["notices"]]
            assert any("config.json is torn" in n for n in notices)
            assert any("report.json is too large to show (20 MiB" in n for n in notices)
            assert any("metrics.csv: 1 torn line skipped" in n for n in notices)
            assert any("metrics.csv: 1 line with no round number skipped" in n for n in notices)
            assert any("run other: devices.json is torn" in n for n in notices)
        (quick / "report.json").unlink()
        r = httpx.get(url + "/api/state")
        run = next(x for x in r.json()["runs"] if x["id"] == "quick")
        assert run["state"] != "done" and not any("report.json" in n for n in run["notices"])
        assert httpx.get(url + "/").status_code == 200


def test_actions_are_off_by_default_and_csrf_safe_when_on(tmp_path):
    fleet = build_fleet(tmp_path)
    (tmp_path / "runs").mkdir()
    with serving(ConsoleServer(tmp_path / "runs", fleet.registry)) as url:
        assert httpx.get(url + "/api/state").json()["actions"] is False
        r = httpx.post(url + "/api/rollouts/main/halt", headers=ACT, content="{}")
        assert r.status_code == 403 and "read-only" in r.json()["error"]
    key = fleet.keys.key
    with serving(ConsoleServer(tmp_path / "runs", fleet.registry, rollout_key=key)) as url:
        halt = url + "/api/rollouts/main/halt"
        assert httpx.post(halt, content="{}").status_code == 403  # no console header
        evil = {**ACT, "Origin": "http://evil.example"}
        assert httpx.post(halt, headers=evil, content="{}").status_code == 403
        promote = url + "/api/rollouts/main/promote"
        r = httpx.post(promote, headers=ACT, content=json.dumps({"fraction": 0.5}))
        assert r.status_code == 400 and "only raises the fraction" in r.json()["error"]
        r = httpx.post(promote, headers=ACT, content=json.dumps({"fraction": "all"}))
        assert r.status_code == 400
        assert httpx.post(url + "/api/rollouts/../halt", headers=ACT).status_code == 404
        own = {**ACT, "Origin": url}
        r = httpx.post(halt, headers=own, content="{}")
        assert (
            r.status_code == 200
            and r.json()["message"] == "channel main: halted, back to stable v1"
        )
        r = httpx.post(halt, headers=ACT, content="{}")
        assert r.status_code == 400 and "no candidate rolling out" in r.json()["error"]
    assert Rollouts(fleet.registry).read_channel("main")[1].candidate is None


def test_a_quiet_device_is_flagged(tmp_path):
    import time

    from fedadapt.server.console.fleet import Fleet

    fleet = build_fleet(tmp_path)
    view = Fleet(fleet.registry, quiet_after=600).device_view(now=time.time() + 601)
    assert len(view["devices"]) == len(fleet.devices) and all(d["quiet"] for d in view["devices"])
    view = Fleet(fleet.registry, quiet_after=600).device_view()
    assert not any(d["quiet"] for d in view["devices"])


def test_a_torn_report_line_or_rollout_state_is_a_notice(tmp_path):
    fleet = build_fleet(tmp_path)
    (tmp_path / "runs").mkdir()
    state = Rollouts(fleet.registry).folder("main")
    with open(state / "reports.jsonl", "a") as f:
        f.write('{"device": "00')  # an append cut short
    (state.parent / "beta" / "rollout.json").write_text('{"candidate": 2, "sta')
    with serving(ConsoleServer(tmp_path / "runs", fleet.registry)) as url:
        r = httpx.get(url + "/api/state")
        assert r.status_code == 200
        got = r.json()
        assert got["rollouts"]["notices"] == [
            "channel beta: rollout.json is torn or not JSON (a write cut short?); it is skipped",
            "channel main: reports.jsonl: 1 torn line skipped",
        ]
        assert len(got["devices"]["devices"]) == len(fleet.devices)  # every whole report
        main = next(c for c in got["rollouts"]["channels"] if c["name"] == "main")
        assert len(main["interval"]["mean"]) == fleet.main_reports - 1
