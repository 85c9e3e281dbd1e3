"""The SuperLink guard's rule, without a SuperLink: which caller reaches which API (the
integration test, tests/fedadapt/launch/test_control_api.py, runs it for real)."""

from __future__ import annotations

import asyncio

import pytest

from fedadapt.server import superlink_guard
from fedadapt.server.superlink_guard import OperatorOnly, _bound_host, operator_addresses


def _call(path: str, peer: str, allowed: frozenset[str]) -> int:
    """The status a request gets: 200 from the app behind, or the guard's answer."""
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "client": (peer, 40000)}
    asyncio.run(OperatorOnly(app, allowed)(scope, receive, send))
    return sent[0]["status"]


@pytest.mark.parametrize(
    ("path", "peer", "status"),
    [
        ("/v1/control/start-run", "10.0.0.7", 403),  # a device submits a run
        ("/v1/control/register-node", "10.0.0.7", 403),  # a device registers a node key
        ("/v1/runtime/pull-messages", "10.0.0.7", 403),
        ("/v1/control/start-run", "127.0.0.2", 403),  # only the listed addresses
        ("/v1/fleet/pull-messages", "10.0.0.7", 200),  # the Fleet API: node auth decides
        ("/health", "10.0.0.7", 200),
        ("/v1/fleet/../control/start-run", "10.0.0.7", 403),  # no dot segments
        ("/v1/fleet//x", "10.0.0.7", 403),
        ("/v1/control/start-run", "127.0.0.1", 200),  # the operator
        ("/v1/control/start-run", "::1", 200),
        ("/v1/control/start-run", "garbage", 403),
    ],
)
def test_only_the_operator_reaches_the_control_and_runtime_apis(path, peer, status):
    assert _call(path, peer, frozenset({"127.0.0.1", "::1"})) == status


def test_the_operator_addresses_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(superlink_guard.OPERATOR_ENV, raising=False)
    assert operator_addresses() == {"127.0.0.1", "::1"}
    monkeypatch.setenv(superlink_guard.OPERATOR_ENV, "10.0.0.2, ::ffff:10.0.0.3,")
    assert operator_addresses() == {"127.0.0.1", "::1", "10.0.0.2", "::ffff:a00:3"}
    monkeypatch.setenv(superlink_guard.OPERATOR_ENV, "10.0.0.2,opr-host")
    with pytest.raises(SystemExit, match="'opr-host' is not an IP address"):
        operator_addresses()


def test_the_superlinks_own_bound_address_is_allowed():
    """Its SuperExec and ServerApps call the Runtime API from the address it binds."""
    assert _bound_host(["--host", "10.0.0.5", "--port", "9093"]) == {"10.0.0.5"}
    assert _bound_host(["--host=10.0.0.5"]) == {"10.0.0.5"}
    assert _bound_host(["--host", "0.0.0.0"]) == frozenset()
    assert _bound_host(["--host", "superlink.example.org"]) == frozenset()
    assert _bound_host([]) == frozenset()
