"""`fedadapt console`: the operator's web page over runs, devices and rollouts
(`fedadapt.server.console`).

Loopback and read-only by default. A bind anywhere else needs the operator token, read from
an environment variable so it stays out of the process list; promote and halt appear only
with `--allow-actions` and the rollout key that signs them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedadapt.cli.args import (
    add_passphrase_option,
    existing_folder,
    folder,
    library_errors,
    passphrase,
    port,
    positive_float,
)
from fedadapt.errors import FedAdaptError

TOKEN_ENV = "FEDADAPT_CONSOLE_TOKEN"


def _token(env: str | None) -> str | None:
    """The token in `$env` (default: FEDADAPT_CONSOLE_TOKEN, where set); None without one."""
    name = env or TOKEN_ENV
    if env is not None and name not in os.environ:
        raise FedAdaptError(f"the token variable {name} is not set")
    value = os.environ.get(name)
    if env is not None and not value:
        raise FedAdaptError(f"the token variable {name} is empty")
    return value or None


def _console(args: argparse.Namespace) -> None:
    """Serve the operator's page: runs round by round, devices, rollouts; it follows the
    files live."""
    from fedadapt.server.console.app import ConsoleServer

    key = None
    if args.allow_actions:
        if not args.rollout_key:
            raise FedAdaptError("--allow-actions needs --rollout-key, the key that signs them")
        from fedadapt.updates.keys import load_private

        key = load_private(args.rollout_key, passphrase(args.passphrase_env))
    elif args.rollout_key:
        raise FedAdaptError("--rollout-key is used only with --allow-actions")
    token = _token(args.token_env)
    with library_errors(f"cannot serve on {args.host}:{args.port}"):
        server = ConsoleServer(
            Path(args.runs),
            Path(args.registry) if args.registry else None,
            Path(args.state) if args.state else None,
            args.host,
            args.port,
            token,
            key,
            args.quiet_after,
        )
    mode = "promote and halt allowed" if key else "read-only"
    access = "operator token required" if token else "no token (loopback)"
    print(f"console at {server.url}/ ({mode}; {access}; Ctrl-C stops)", flush=True)
    server.serve_until_interrupted()


def add_console_command(sub: argparse._SubParsersAction) -> None:
    """Register `console` on `sub`."""
    c = sub.add_parser(
        "console",
        help="the operator's web page: runs, devices and rollouts, live",
        description=_console.__doc__,
    )
    c.add_argument(
        "--runs", required=True, type=existing_folder, help="a run folder, or a folder of runs"
    )
    c.add_argument(
        "--registry", type=existing_folder, help="update registry: its devices and rollouts"
    )
    c.add_argument("--state", type=folder, help="rollout state (default: REGISTRY.rollout)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    c.add_argument("--port", type=port, default=8790, help="port to listen on")
    c.add_argument(
        "--token-env",
        metavar="VAR",
        help=f"the operator token is in $VAR (default: ${TOKEN_ENV} if set); required "
        "beyond loopback",
    )
    c.add_argument(
        "--quiet-after",
        type=positive_float,
        default=900.0,
        help="seconds without a report before a device is flagged quiet",
    )
    c.add_argument(
        "--allow-actions",
        action="store_true",
        help="offer promote and halt on the page (needs --rollout-key)",
    )
    c.add_argument("--rollout-key", help="private key that signs the channel (with actions)")
    add_passphrase_option(c)
    c.set_defaults(func=_console)
