"""The device's commands: `device run`, the one command a device runs
(`fedadapt/clients/service.py`), and `infer`, which serves its personalized model.

`device run`'s flags map one to one onto `ServiceOptions`, and `package-client`'s start
script passes them from `node.env`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedadapt.cli.args import (
    SHAPE_ERRORS,
    existing_folder,
    folder,
    library_errors,
    non_negative_int,
    port,
    positive_float,
    read_json,
)
from fedadapt.cli.args import positive_int as positive
from fedadapt.errors import FedAdaptError


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
        demo_data=args.demo_data,
        update_url=args.update_url,
        trust=tuple(Path(p) for p in args.trust),
        update_interval=args.update_interval,
        channel=args.channel,
    )
    code = DeviceService(opts).run()
    if code:
        raise SystemExit(code)


def _device_status(args: argparse.Namespace) -> None:
    """What this device runs and the last thing that happened: its SuperNode and worker,
    the installed and pending versions, the personalized model, the last round trained with
    its examples and loss, the data read (usable and skipped rows, by file), the last
    evaluation, update check and error. Reads the device folder only."""
    from fedadapt.clients.status import report

    print(report(Path(args.device_dir)))


def _device_personalize(args: argparse.Namespace) -> None:
    """Personalize this device without torch: embed its own examples with ONNX Runtime, then
    fit in numpy a head bias, a personal head and a kNN-Per memory of its training
    embeddings; the one that does best on a validation slice of the train rows is what
    `infer` serves from then on. Prints the held-out accuracy of each. The files written
    (numpy-personal.*, 0600) hold embeddings of the user's texts: they stay on the device."""
    from fedadapt.clients.numpy_personal import MODES, personalize

    device = Path(args.device_dir)
    _check_device_model(device)
    with library_errors(f"cannot personalize the device folder {device}", SHAPE_ERRORS):
        record = personalize(device, args.data_dir, args.threads)
    n = record["examples"]
    print(f"held-out accuracy ({n['held_out']} examples; fitted on {n['train']}):")
    for mode in MODES:
        served = "  (served)" if mode == record["mode"] else ""
        print(f"  {mode:<14}{record['held_out_accuracy'][mode]:.3f}{served}")
    print(f"kNN-Per: k={record['k']} lambda={record['lambda']}")


def add_device_commands(sub: argparse._SubParsersAction) -> None:
    """Register `device run`, `device status` and `device personalize` on `sub`."""
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
    r.add_argument(
        "--demo-data",
        action="store_true",
        help="without a data folder, train on the demo partition --partition-id (a demo)",
    )
    r.add_argument("--partition-id", type=non_negative_int, default=0, help="demo partition")
    r.add_argument(
        "--num-partitions",
        type=positive,
        default=1,
        help="partitions of the demo data (with --partition-id; unused with own data)",
    )
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
    st = actions.add_parser(
        "status",
        help="what this device runs and what happened last",
        description=_device_status.__doc__,
    )
    st.add_argument(
        "--device-dir", required=True, type=existing_folder, help="this device's folder"
    )
    st.set_defaults(func=_device_status)
    pz = actions.add_parser(
        "personalize",
        help="personalize in numpy on ONNX Runtime embeddings (no torch)",
        description=_device_personalize.__doc__,
    )
    pz.add_argument(
        "--device-dir", required=True, type=existing_folder, help="this device's folder"
    )
    pz.add_argument(
        "--data-dir",
        type=existing_folder,
        help="the device's own labelled examples (default: DEVICE_DIR/data)",
    )
    pz.add_argument(
        "--threads", type=non_negative_int, default=0, help="ORT intra-op threads (0: all)"
    )
    pz.set_defaults(func=_device_personalize)


def _check_device_model(device_dir: Path) -> None:
    """A device folder names its graph in runtime.json: both must be there to infer."""
    from fedadapt.onnx_adapter import RUNTIME_FILE

    runtime = device_dir / RUNTIME_FILE
    if not runtime.exists():
        raise FedAdaptError(
            f"{device_dir} has no {RUNTIME_FILE}: install an exported model first "
            "(`fedadapt export --adapter DIR --out DEVICE_DIR`)"
        )
    meta = read_json(runtime, "the device's runtime file")
    model = meta.get("model_file") if isinstance(meta, dict) else None
    if not isinstance(model, str):
        raise FedAdaptError(f"the device's runtime file {runtime} names no model_file")
    if not (device_dir / model).is_file():
        raise FedAdaptError(
            f"{device_dir} has no {model} (named by {RUNTIME_FILE}); export the model again"
        )


def _check_servable(device_dir: Path) -> None:
    """A device whose personalization keeps nothing to serve says so, rather than serving
    the global adapter under the personalized name."""
    from fedadapt.clients.personalized import NOTHING_TO_SERVE, recorded_mode

    with library_errors(f"cannot read the device folder {device_dir}"):
        mode = recorded_mode(device_dir)
    if mode in NOTHING_TO_SERVE:
        raise FedAdaptError(
            f"this device personalizes by {mode!r}: it fine-tunes a copy of the global adapter "
            "for each evaluation and keeps no personal part to serve; infer with --global"
        )


def _served(device_dir: Path, version: int | None) -> str:
    """What the device serves, by name: a signed version, or the global adapter of the last
    round it trained in (version 0 is no version at all)."""
    if version:
        return f"signed adapter version {version}"
    from fedadapt.clients.status import read

    trained = read(device_dir).get("trained")
    if trained:
        return f"the global adapter of training round {trained.get('round')}, not a signed version"
    return "the exported adapter, no round trained yet"


def _infer(args: argparse.Namespace) -> None:
    """Classify texts with ONNX Runtime and the device's personalized adapter: the installed
    global adapter plus the device's personal part (`--global`: the shared one). No torch."""
    from fedadapt.clients.runtime import EdgeRuntime

    if not args.use_global and not args.adapter and not args.task and _infer_numpy(args):
        return
    if not args.use_global and not args.adapter:
        _check_servable(Path(args.device_dir))
    _check_device_model(Path(args.device_dir))
    with library_errors(f"cannot load the device folder {args.device_dir}", SHAPE_ERRORS):
        rt = EdgeRuntime(args.device_dir, args.threads, personalized=not args.use_global)
    if args.adapter:
        with library_errors(f"cannot activate {args.adapter}", SHAPE_ERRORS):
            rt.activate(args.adapter)
    for p in rt.predict(args.texts, task=args.task):
        scores = " ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
        print(f"{p.label}\t{scores}\t{p.text}")
    kind = "personalized" if rt.personalized and not args.adapter else "global"
    print(f"({_served(Path(args.device_dir), rt.adapter_version)}, {kind})", file=sys.stderr)


def _infer_numpy(args: argparse.Namespace) -> bool:
    """Serve the device's numpy personalization (`device personalize`) if it has one fitted
    over the global adapter in use; False where it has none, or a stale one."""
    from fedadapt.clients import numpy_personal
    from fedadapt.clients.runtime import EdgeRuntime

    device = Path(args.device_dir)
    if not (device / numpy_personal.RECORD_FILE).exists():
        return False
    _check_device_model(device)
    with library_errors(f"cannot load the device folder {device}", SHAPE_ERRORS):
        rt = EdgeRuntime(device, args.threads, personalized=False)
        fitted = numpy_personal.load(device, rt)
        if fitted is None:
            return False
        predictions = numpy_personal.predict(rt, fitted, args.texts)
    for p in predictions:
        scores = " ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
        print(f"{p.label}\t{scores}\t{p.text}")
    how = fitted.mode + (f" k={fitted.k} lambda={fitted.lam}" if fitted.mode == "knn-per" else "")
    served = _served(device, rt.adapter_version)
    print(f"({served}, personalized in numpy: {how})", file=sys.stderr)
    return True


def add_infer_command(sub: argparse._SubParsersAction) -> None:
    """Register `infer` on `sub`."""
    i = sub.add_parser(
        "infer", help="classify texts on a device folder", description=_infer.__doc__
    )
    i.add_argument(
        "--device-dir", required=True, type=existing_folder, help="the device folder to serve"
    )
    i.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")
    i.add_argument("--adapter", help="use this .onnx_adapter instead of the installed one")
    i.add_argument(
        "--global",
        dest="use_global",
        action="store_true",
        help="the shared global adapter, not this device's personalized one (the default)",
    )
    i.add_argument(
        "--task", type=non_negative_int, help="task index, for a stacked multi-adapter graph"
    )
    i.add_argument(
        "--threads", type=non_negative_int, default=0, help="ORT intra-op threads (0: all)"
    )
    i.set_defaults(func=_infer)
