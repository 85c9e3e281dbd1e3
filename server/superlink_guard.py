"""`flower-superlink` with its operator APIs closed to devices (issue 23).

In Flower 1.42 the Fleet, Control and Runtime APIs share the SuperLink's one HTTPS port, and
the open-source SuperLink authenticates no Control API caller (its account plugin is a
no-op; OIDC is not in this distribution). TLS is not mutual: `ca.crt`, which every device
package ships, only lets a client check the server. So anyone who reaches the port, a
device included, could submit a run (a ServerApp of their own, run by the SuperLink) or
register a node key (tests/fedadapt/launch/test_control_api.py shows both on a plain
SuperLink).

This runs Flower's own `flower-superlink` with one ASGI middleware in front of all of it:
a request from neither this host's loopback (127.0.0.1, ::1), nor an address in
`FEDADAPT_OPERATOR_ADDRESSES` (comma-separated IPs: the operator's machines), nor the
address the SuperLink binds with --host (its own SuperExec and ServerApps call the Runtime
API from it, or from loopback when it binds all addresses) reaches only the Fleet API
(`/v1/fleet/`, where SuperNode authentication applies) and `/health`; the Control and
Runtime APIs answer it 403. The
operator runs `flwr` on the SuperLink's host, or through an SSH tunnel to it. The
middleware reads the TCP peer, not a header a client could set: put no proxy in front
that makes every client look local.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

OPERATOR_ENV = "FEDADAPT_OPERATOR_ADDRESSES"
DEVICE_PATHS = ("/v1/fleet/", "/health")


def operator_addresses() -> frozenset[str]:
    """The addresses allowed every API: loopback (the SuperLink's own processes, and `flwr`
    on its host) and `$FEDADAPT_OPERATOR_ADDRESSES` (comma-separated IPs). A malformed
    entry stops the start: a typo must not open the API."""
    raw = os.environ.get(OPERATOR_ENV, "")
    out = {"127.0.0.1", "::1"}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            out.add(str(ipaddress.ip_address(part)))
        except ValueError:
            sys.exit(f"{OPERATOR_ENV}: {part!r} is not an IP address")
    return frozenset(out)


def device_may(path: str) -> bool:
    """Whether a client that is not the operator may call `path` (the Fleet API, health)."""
    if "/." in path or "//" in path or "\\" in path:  # no dot segments to route elsewhere
        return False
    return path == "/health" or path.startswith(DEVICE_PATHS)


class OperatorOnly:
    """ASGI middleware: the Control and Runtime APIs answer only the operator's addresses."""

    def __init__(self, app, allowed: frozenset[str] | None = None) -> None:
        self.app = app
        self.allowed = operator_addresses() if allowed is None else allowed

    async def __call__(self, scope, receive, send) -> None:
        """Pass a request on, or answer 403 for a non-operator caller off the Fleet API."""
        if scope["type"] != "http" or device_may(scope.get("path", "")):
            return await self.app(scope, receive, send)
        client = scope.get("client") or ("", 0)
        try:
            peer = str(ipaddress.ip_address(client[0]))
        except ValueError:
            peer = ""
        if peer in self.allowed:
            return await self.app(scope, receive, send)
        body = json.dumps({"detail": "the operator APIs answer the operator's host only"})
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
        return None


def _bound_host(args: list[str]) -> frozenset[str]:
    """The IP given with `--host`, if one: the SuperLink's own processes call from it."""
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--host" and i + 1 < len(args) else None
        if arg.startswith("--host="):
            value = arg.partition("=")[2]
        if value:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                return frozenset()
            return frozenset() if ip.is_unspecified else frozenset({str(ip)})
    return frozenset()


def main() -> None:
    """`flower-superlink` with `OperatorOnly` outermost; arguments pass through unchanged."""
    import flwr.superlink.main as superlink_main
    from flwr.superlink.cli import flower_superlink
    from starlette.middleware import Middleware

    allowed = operator_addresses() | _bound_host(sys.argv[1:])
    flower_middleware = superlink_main._get_middleware

    def guarded() -> list[Middleware]:
        return [Middleware(OperatorOnly, allowed=allowed), *flower_middleware()]

    superlink_main._get_middleware = guarded
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
