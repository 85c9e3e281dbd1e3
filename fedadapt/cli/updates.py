"""The update-channel commands of `fedadapt`: keygen, publish, serve-updates, fetch and
rollback. Each checks what it reads from disk or the network at the call, so a missing file,
a corrupt JSON file or a refused connection is one line naming it, and nothing is written."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedadapt.cli.args import (
    SHAPE_ERRORS,
    add_listen_options,
    add_passphrase_option,
    existing_folder,
    folder,
    library_errors,
    passphrase,
    per_client,
    positive_float,
    read_json,
)
from fedadapt.errors import FedAdaptError


def _keygen(args: argparse.Namespace) -> None:
    """Make an Ed25519 key pair for signing adapter updates (private key mode 0600)."""
    from fedadapt.updates.keys import key_id, keygen, load_public

    with library_errors(f"cannot write keys into {args.out}"):
        priv, pub = keygen(args.out, passphrase(args.passphrase_env))
    print(f"private key: {priv}\npublic key:  {pub}\nkey id:      {key_id(load_public(pub))}")


def _publish(args: argparse.Namespace) -> None:
    """Publish an adapter folder as the next signed version in a static-file registry."""
    import datetime as dt

    from fedadapt.server.updates.publish import INDEX, publish
    from fedadapt.updates.keys import load_private

    key = load_private(args.key, passphrase(args.passphrase_env))
    index = Path(args.registry) / INDEX
    if index.exists() and not isinstance(read_json(index, "the registry index"), dict):
        raise FedAdaptError(f"the registry index {index} is not a JSON object")
    with library_errors(f"cannot publish {args.adapter} into {args.registry}", SHAPE_ERRORS):
        entry = publish(
            args.adapter,
            args.registry,
            key,
            name=args.name,
            expires_in=dt.timedelta(days=args.expires_days),
            timestamp_expires_in=dt.timedelta(hours=args.index_expires_hours),
        )
    deltas = ", ".join(
        f"from v{d['from_version']}: {d['payload_bytes']} B" for d in entry["deltas"]
    )
    print(
        f"published version {entry['version']}: full {entry['full']['payload_bytes']} B"
        + (f"; deltas {deltas}" if deltas else "")
    )


def _refresh_index(args: argparse.Namespace) -> None:
    """Re-sign the registry's timestamp (next version, new expiry) without a new adapter
    version; run it more often than the expiry, or devices report `stale-index`."""
    import datetime as dt

    from fedadapt.server.updates.publish import refresh_timestamp
    from fedadapt.updates.keys import load_private

    key = load_private(args.key, passphrase(args.passphrase_env))
    with library_errors(f"cannot refresh the index of {args.registry}"):
        version = refresh_timestamp(
            args.registry, key, dt.timedelta(hours=args.index_expires_hours)
        )
    print(f"signed timestamp version {version}, valid {args.index_expires_hours:g} h")


def _serve_updates(args: argparse.Namespace) -> None:
    """Serve a registry over HTTP (Range requests, bounded connections, no path escapes)."""
    from fedadapt.server.updates.service import UpdateServer

    with library_errors(f"cannot serve on {args.host}:{args.port}"):
        server = UpdateServer(
            Path(args.registry),
            args.host,
            args.port,
            args.max_connections,
            args.timeout,
            max_per_client=per_client(args),
        )
    print(f"serving {server.root} at {server.url} (Ctrl-C stops)", flush=True)
    server.serve_until_interrupted()


def _device_base(device_dir: Path) -> str:
    """The base model's SHA-256 the device runs: an edge device's installed graph names it
    in runtime.json (no torch there); elsewhere it is this machine's base model."""
    from fedadapt.clients.runtime import STATE_FILE
    from fedadapt.onnx_adapter import RUNTIME_FILE

    state = device_dir / STATE_FILE
    if state.exists() and not isinstance(read_json(state, "the device state"), dict):
        raise FedAdaptError(f"the device state {state} is not a JSON object")
    runtime = device_dir / RUNTIME_FILE
    if runtime.exists():
        meta = read_json(runtime, "the device's runtime file")
        if not isinstance(meta, dict) or not isinstance(meta.get("base_sha256"), str):
            raise FedAdaptError(f"the device's runtime file {runtime} names no base_sha256")
        return meta["base_sha256"]
    from fedadapt.base.checkpoint import base_sha256

    return base_sha256()


def _fetch(args: argparse.Namespace) -> None:
    """Fetch the newest adapter update, verify it and apply it atomically."""
    from fedadapt.clients.updates.updater import fetch
    from fedadapt.updates.keys import load_public

    base = _device_base(Path(args.device_dir))
    trusted = [load_public(p) for p in args.trust]
    with library_errors(f"fetch from {args.url} failed", SHAPE_ERRORS):
        m = fetch(
            args.url,
            args.device_dir,
            trusted,
            base,
            timeout=args.timeout,
            adapter_name=args.adapter_name,
        )
    if m is None:
        print("already up to date")
    else:
        print(f"installed {m.adapter_name} version {m.version} ({m.kind}, {m.payload_bytes} B)")


def _rollback(args: argparse.Namespace) -> None:
    """Go back to the previously installed adapter version."""
    from fedadapt.clients.updates.updater import DeviceStore

    with library_errors(f"cannot roll back {args.device_dir}", SHAPE_ERRORS):
        version = DeviceStore(args.device_dir).rollback()
    print(f"rolled back to version {version}")


def add_update_commands(sub: argparse._SubParsersAction) -> None:
    """Register keygen, publish, serve-updates, fetch and rollback on `sub`."""
    k = sub.add_parser(
        "keygen", help="make an Ed25519 signing key pair", description=_keygen.__doc__
    )
    k.add_argument("--out", required=True, type=folder, help="folder for the key files")
    add_passphrase_option(k, "encrypt with the passphrase in $VAR")
    k.set_defaults(func=_keygen)

    p = sub.add_parser(
        "publish", help="publish a signed adapter update", description=_publish.__doc__
    )
    p.add_argument("--adapter", required=True, type=existing_folder, help="adapter folder")
    p.add_argument("--registry", required=True, type=folder, help="registry folder (static files)")
    p.add_argument("--key", required=True, help="private key file")
    add_passphrase_option(p)
    p.add_argument("--name", help="adapter name (default: the registry's, or the folder's)")
    p.add_argument(
        "--expires-days",
        type=positive_float,
        default=30.0,
        help="days until the version's manifest expires (a device then refuses it)",
    )
    p.add_argument(
        "--index-expires-hours",
        type=positive_float,
        default=24.0,
        help="lifetime of the signed index timestamp (renew with refresh-index)",
    )
    p.set_defaults(func=_publish)

    ri = sub.add_parser(
        "refresh-index",
        help="re-sign the registry's index timestamp",
        description=_refresh_index.__doc__,
    )
    ri.add_argument(
        "--registry", required=True, type=existing_folder, help="registry folder (static files)"
    )
    ri.add_argument("--key", required=True, help="private key file")
    add_passphrase_option(ri)
    ri.add_argument(
        "--index-expires-hours",
        type=positive_float,
        default=24.0,
        help="hours until the new timestamp expires (devices then report stale-index)",
    )
    ri.set_defaults(func=_refresh_index)

    s = sub.add_parser(
        "serve-updates", help="serve a registry over HTTP", description=_serve_updates.__doc__
    )
    s.add_argument(
        "--registry", required=True, type=existing_folder, help="registry folder to serve"
    )
    add_listen_options(s)
    s.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds a connection may idle"
    )
    s.set_defaults(func=_serve_updates)

    f = sub.add_parser(
        "fetch", help="fetch, verify and apply the newest update", description=_fetch.__doc__
    )
    f.add_argument("--url", required=True, help="registry URL")
    f.add_argument("--device-dir", required=True, type=folder, help="this device's folder")
    f.add_argument("--trust", required=True, action="append", help="trusted public key (repeat)")
    f.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds for the whole fetch"
    )
    f.add_argument(
        "--adapter-name",
        help="the adapter this device runs: kept in the device folder, and a bundle for "
        "another is refused, the first install included (default: the registry's)",
    )
    f.set_defaults(func=_fetch)

    r = sub.add_parser(
        "rollback", help="go back one adapter version", description=_rollback.__doc__
    )
    r.add_argument("--device-dir", required=True, type=existing_folder, help="this device's folder")
    r.set_defaults(func=_rollback)
