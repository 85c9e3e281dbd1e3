"""`fedadapt device run`: the one command a device runs (see `fedadapt/clients/service.py`).

Kept out of `cli.py` so that the command line's main module stays small; the flags map one
to one onto `ServiceOptions`, and `package-client`'s start script passes them from
`node.env`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedadapt.cli_args import existing_folder, folder, non_negative_int, port, positive_float
from fedadapt.cli_args import positive_int as positive


def _device_run(args: argparse.Namespace) -> None:
    """Run this device: its SuperNode (TLS, node key, the device's own data), the warm worker
    that runs each message without importing torch again, the signed-update loop (or, with
    --channel, the staged rollout of that channel), and the personalized ONNX model, until
    SIGTERM. A restart resumes with the personal state kept in the device
    folder."""
    from fedadapt.clients.service import DeviceService, ServiceOptions

    device = Path(args.device_dir)
    data = args.data_dir or (device / "data" if (device / "data").is_dir() else None)
    opts = ServiceOptions(
        device_dir=device,
        superlink=args.superlink,
        root_cert=Path(args.root_cert),
        node_key=Path(args.node_key),
        port=args.port,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        data_dir=Path(data) if data else None,
        update_url=args.update_url,
        trust=tuple(Path(p) for p in args.trust),
        update_interval=args.update_interval,
        channel=args.channel,
    )
    code = DeviceService(opts).run()
    if code:
        raise SystemExit(code)


def add_device_commands(sub: argparse._SubParsersAction) -> None:
    """Register `device run` on `sub`."""
    d = sub.add_parser(
        "device", help="run this machine as a device", description="Commands run on a device."
    )
    actions = d.add_subparsers(dest="action", required=True)
    r = actions.add_parser(
        "run",
        help="the SuperNode, its warm worker, signed updates and the personalized model",
        description=_device_run.__doc__,
    )
    r.add_argument("--device-dir", required=True, type=folder, help="this device's folder")
    r.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    r.add_argument("--root-cert", required=True, help="the CA certificate (TLS)")
    r.add_argument("--node-key", required=True, help="this SuperNode's private key")
    r.add_argument("--port", type=port, default=9094, help="the SuperNode's own port")
    r.add_argument(
        "--data-dir",
        type=existing_folder,
        help="the device's own examples (default: DEVICE_DIR/data if it exists, else the "
        "demo partition)",
    )
    r.add_argument("--partition-id", type=non_negative_int, default=0, help="demo partition")
    r.add_argument("--num-partitions", type=positive, default=1)
    r.add_argument("--update-url", help="the update registry's URL (with --trust)")
    r.add_argument("--trust", action="append", default=[], help="update-signing public key")
    r.add_argument(
        "--update-interval", type=positive_float, default=3600.0, help="seconds between checks"
    )
    r.add_argument(
        "--channel",
        metavar="NAME",
        help="follow this rollout channel instead of the newest version: each interval, run "
        "the version it names for this device, score it and the stable one on the held-out "
        "split of the data folder, report, roll back past the local bound",
    )
    r.set_defaults(func=_device_run)
