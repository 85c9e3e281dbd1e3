"""`fedadapt rollout start|promote|finish|halt|status|serve`: staged rollout of an adapter version
on a signed channel (`fedadapt.server.updates.rollout`).

`start`, `promote` and `halt` sign the next version of the channel file in the registry;
`serve` is `serve-updates` that also takes the devices' signed reports and lets the guardrail
halt a bad candidate (it signs that revert with `--key`); `status` prints the reports as a
table and plots the candidate's paired difference with its 95% interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedadapt.cli.args import (
    add_listen_options,
    add_passphrase_option,
    existing_folder,
    folder,
    library_errors,
    passphrase,
    per_client,
    positive_int,
    summary,
)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fraction is in (0, 1], got {text!r}")
    return value


def _rollouts(args: argparse.Namespace):
    from fedadapt.server.updates.rollout import Rollouts

    return Rollouts(args.registry, args.state)


def _key(args: argparse.Namespace):
    from fedadapt.updates.keys import load_private

    return load_private(args.key, passphrase(args.passphrase_env))


def _start(args: argparse.Namespace) -> None:
    """Offer a version to a fraction of the channel's devices."""
    from fedadapt.server.updates.rollout import Guardrail

    guard = Guardrail(args.threshold, args.max_failure_rate, args.min_devices)
    ch = _rollouts(args).start(
        args.channel, args.version, args.fraction, _key(args), args.stable, guard
    )
    print(f"channel {args.channel}: v{ch.candidate} to {ch.fraction:.0%}, stable v{ch.stable}")


def _promote(args: argparse.Namespace) -> None:
    """Raise the candidate's fraction (only adds devices)."""
    ch = _rollouts(args).promote(args.channel, args.fraction, _key(args))
    print(f"channel {args.channel}: v{ch.candidate} to {ch.fraction:.0%}")


def _finish(args: argparse.Namespace) -> None:
    """Make the candidate, promoted to every device, the channel's stable version."""
    ch = _rollouts(args).finish(args.channel, _key(args))
    print(f"channel {args.channel}: stable is now v{ch.stable}")


def _halt(args: argparse.Namespace) -> None:
    """Revert the channel to its stable version, signed; devices switch back next poll."""
    ch = _rollouts(args).halt(args.channel, _key(args))
    print(f"channel {args.channel}: halted, back to stable v{ch.stable}")


def _status(args: argparse.Namespace) -> None:
    """The channel, its reports as a table, and a plot of the paired difference."""
    from fedadapt.server.updates.status import plot, status_text

    rollouts = _rollouts(args)
    text, reports = status_text(rollouts, args.channel)
    print(text)
    if len(reports) >= 2:
        out = Path(args.plot) if args.plot else rollouts.folder(args.channel) / "paired.png"
        plot(reports, rollouts.guardrail(args.channel).threshold, out, f"channel {args.channel}")
        print(f"plot: {out}")


def _serve(args: argparse.Namespace) -> None:
    """serve-updates plus the report endpoint and the guardrail."""
    from fedadapt.server.updates.reports import ReportSink, load_device_keys
    from fedadapt.server.updates.service import UpdateServer

    sink = ReportSink(_rollouts(args), load_device_keys(args.devices), _key(args))
    with library_errors(f"cannot serve on {args.host}:{args.port}"):
        server = UpdateServer(
            Path(args.registry),
            args.host,
            args.port,
            args.max_connections,
            reports=sink,
            max_per_client=per_client(args),
        )
    print(f"serving {server.root} with rollout reports at {server.url} (Ctrl-C stops)", flush=True)
    server.serve_until_interrupted()


def _poll(args: argparse.Namespace) -> None:
    """On a device: read the channel, run the version it names for this device, score both
    versions on the held-out split of the device's own data and report (one poll)."""
    from fedadapt.clients.updates.rollout_agent import device_agent

    agent = device_agent(
        Path(args.device_dir), args.url, args.channel, [Path(p) for p in args.trust],
        Path(args.data_dir), args.local_bound, args.test_fraction, args.split_key,
    )  # fmt: skip
    r = agent.poll()
    print(
        f"device {agent.device_id}: channel version {r.channel_version}, runs v{r.target} "
        f"({r.action})"
    )
    if r.report:
        print(json.dumps(r.report, sort_keys=True))
    if r.halted:
        print(f"the service halted the rollout: {r.halted}")


def add_rollout_commands(sub: argparse._SubParsersAction) -> None:
    """Register the `rollout` subcommands on `sub`."""
    r = sub.add_parser(
        "rollout",
        help="staged rollout of an adapter version on a channel",
        description="Staged rollout of an adapter version on a channel: a candidate goes to a "
        "growing share of devices, which report paired held-out accuracy; a guardrail halts and "
        "reverts it when the candidate is worse.",
    )
    actions = r.add_subparsers(dest="action", required=True)

    def command(name: str, func, signs: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=summary(func.__doc__), description=func.__doc__)
        p.add_argument("--registry", required=True, type=existing_folder, help="registry folder")
        p.add_argument("--channel", default="main", help="channel name (default: main)")
        p.add_argument("--state", type=folder, help="rollout state (default: REGISTRY.rollout)")
        if signs:
            p.add_argument("--key", required=True, help="private key that signs the channel")
            add_passphrase_option(p)
        p.set_defaults(func=func)
        return p

    s = command("start", _start)
    s.add_argument("--version", required=True, type=positive_int, help="the candidate")
    s.add_argument("--fraction", required=True, type=_fraction, help="share of devices, (0, 1]")
    s.add_argument("--stable", type=positive_int, help="stable version (a new channel)")
    s.add_argument("--threshold", type=float, default=0.02, help="tolerated accuracy loss")
    s.add_argument(
        "--max-failure-rate",
        type=float,
        default=0.05,
        help="halt when the candidate's failure rate exceeds this",
    )
    s.add_argument(
        "--min-devices",
        type=positive_int,
        default=5,
        help="reporting devices needed before the guardrail decides",
    )
    command("promote", _promote).add_argument(
        "--fraction", required=True, type=_fraction, help="the new share of devices, (0, 1]"
    )
    command("halt", _halt)
    command("finish", _finish)
    command("status", _status, signs=False).add_argument("--plot", help="PNG path for the plot")
    d = actions.add_parser("poll", help=summary(_poll.__doc__), description=_poll.__doc__)
    d.add_argument("--device-dir", required=True, type=existing_folder, help="this device's folder")
    d.add_argument("--url", required=True, help="the update service's URL")
    d.add_argument("--trust", required=True, action="append", help="trusted public key (repeat)")
    d.add_argument("--data-dir", required=True, type=existing_folder, help="the device's data")
    d.add_argument("--channel", default="main", help="the channel this device follows")
    d.add_argument(
        "--local-bound", type=_fraction, default=0.1, help="accuracy drop that rolls back"
    )
    d.add_argument(
        "--test-fraction", type=_fraction, default=None,
        help="held-out share (default: the one the device trains with, DEVICE_DIR/split.json, "
        "else 0.3)",
    )  # fmt: skip
    d.add_argument(
        "--split-key", default=None,
        help="held-out split key (default: the device's, as --test-fraction; else 0)",
    )  # fmt: skip
    d.set_defaults(func=_poll)
    v = command("serve", _serve)
    v.add_argument("--devices", required=True, type=existing_folder, help="folder of device *.pub")
    add_listen_options(v)
