"""The `fedadapt` command line. Each subcommand is a thin shell over a library function.

Every failure a user can cause (a bad argument, a missing or corrupt file, a refused
connection) ends as one line, `fedadapt: error: ...`, and exit code 2; `--debug` adds the
traceback. The update-channel commands live in `fedadapt.cli_updates`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedadapt.cli_args import (
    OneLineParser,
    describe,
    existing_folder,
    folder,
    library_errors,
    non_negative_int,
    port,
    positive_int,
)
from fedadapt.cli_device import add_device_commands
from fedadapt.cli_export import add_export_command
from fedadapt.cli_rollout import add_rollout_commands
from fedadapt.cli_updates import SHAPE_ERRORS, add_update_commands, read_json
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import CODECS, FEDERATED_METHODS, QUANTIZATIONS, STRATEGIES

DEPLOY_CONFIG = "simulations/deploy.toml"  # what `deploy-demo` and the README's deployment run

# The flags of `simulate` that are config keys (the rest come by --set KEY=VALUE).
SIMULATE_KEYS = (
    "rounds",
    "num_clients",
    "clients_per_round",
    "strategy",
    "codec",
    "method",
    "quantization",
    "seed",
    "ray_address",
)
DEFAULT_CONFIG, DEFAULT_OUT = "simulations/quick.toml", "out/quick"


def _simulate(args: argparse.Namespace) -> None:
    """Run a federated simulation on Flower's Simulation Engine and write its report."""
    from fedadapt import continual, simulate
    from fedadapt.simconfig import SimConfig

    overrides = {k: getattr(args, k) for k in SIMULATE_KEYS}
    overrides["baselines"] = False if args.no_baselines else None
    overrides.update(_parse_sets(args.set))
    if args.resume:
        for flag, value in (
            ("--config", args.config),
            ("--out", args.out),
            ("--continue-from", args.continue_from),
        ):
            if value is not None:
                raise FedAdaptError(
                    f"--resume continues the run in {args.resume} with its own config and "
                    f"folder; drop {flag} (change keys with --set where that is safe)"
                )
        cfg = simulate.resume_config(Path(args.resume), **overrides)
    else:
        out = str(Path(args.out or DEFAULT_OUT).resolve())
        config = args.config or Path(__file__).resolve().parents[1] / DEFAULT_CONFIG
        cfg = SimConfig.load(config, **overrides, out=out)
    earlier = None  # --continue-from: the earlier run's tasks, checked before this run starts
    if args.continue_from is not None:
        earlier = continual.check_continuation(Path(args.continue_from), cfg.dataset, cfg.method)
    out = simulate.run(cfg)
    print(f"report: {out / 'report.json'}  plots: {out / 'plots'}  adapter: {out / 'adapter'}")
    if earlier is not None:
        tasks = [t["adapter"] for t in earlier] + [str(out / "adapter")]
        print(
            f"tasks: {continual.write_tasks(out, earlier, cfg.dataset)}; one graph for all: "
            f"fedadapt export {' '.join(f'--adapter {t}' for t in tasks)} --out {out / 'device'}"
        )


def _deploy_demo(args: argparse.Namespace) -> None:
    """Run the same apps on Flower's Deployment Engine on 127.0.0.1: a SuperLink with TLS and
    SuperNode authentication, N SuperNodes as separate processes, one run; then stop them."""
    from fedadapt import deploy
    from fedadapt.simconfig import SimConfig

    out = Path(args.out).resolve()
    cfg = SimConfig.load(args.config, num_clients=args.nodes, out=str(out / "run"))
    run = deploy.demo(cfg, out, nodes=args.nodes)
    print(f"report: {run / 'report.json'}")


def _certs(args: argparse.Namespace) -> None:
    """Make a CA, a SuperLink TLS certificate and SuperNode key pairs (keys mode 0600)."""
    from fedadapt.certs import make_certs

    hosts = args.host or ["127.0.0.1", "localhost"]
    with library_errors(f"cannot write certificates into {args.out}"):
        paths = make_certs(args.out, hosts, args.supernodes)
    print(f"CA: {paths['ca']}  SuperLink: {paths['cert']} ({', '.join(hosts)})")
    print(f"SuperNode keys: {Path(args.out) / 'supernodes'} (register each *.pub)")


def _package_client(args: argparse.Namespace) -> None:
    """Write what an edge device needs to join a deployment as one SuperNode: the fedadapt
    wheel and pinned requirements, the base model files, the CA certificate and the node's
    key, its node config, install.sh and start.sh. Copy the folder to the device, run
    install.sh once, then start.sh."""
    from fedadapt.package import package_client
    from fedadapt.simulate import project_dir

    if args.config and args.no_graph:
        raise FedAdaptError("--config ships a device graph and --no-graph ships none: pick one")
    # the deployment's config by default: the device infers with ONNX Runtime from the start
    config = None if args.no_graph else Path(args.config or project_dir() / DEPLOY_CONFIG)
    with library_errors(f"cannot write the client package {args.out}"):
        out = package_client(
            Path(args.out),
            Path(args.certs),
            args.node,
            args.superlink,
            partition_id=args.partition_id,
            num_partitions=args.num_partitions,
            port=args.port,
            update_key=Path(args.update_key) if args.update_key else None,
            update_url=args.update_url,
            config=config,
            demo_data=not args.no_demo_data,
        )
    print(f"client package: {out} (on the device: {out}/install.sh, then {out}/start.sh)")


def _parse_sets(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs, VALUE read as KEY's declared type (`SimConfig.parse_override`)."""
    from fedadapt.simconfig import SimConfig

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise FedAdaptError(f"--set wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = SimConfig.parse_override(key.strip(), value)
    return out


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


def _infer(args: argparse.Namespace) -> None:
    """Classify texts with ONNX Runtime and the device's personalized adapter: the installed
    global adapter plus the device's personal part (`--global`: the shared one). No torch."""
    from fedadapt.clients.runtime import EdgeRuntime

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
    print(f"(adapter version {rt.adapter_version}, {kind})", file=sys.stderr)


def _bench(args: argparse.Namespace) -> None:
    from fedadapt.bench import run

    merged_into = Path(args.out)  # sections are merged into it: it must be a JSON object
    if merged_into.exists() and not isinstance(read_json(merged_into, "the bench file"), dict):
        raise FedAdaptError(f"the bench file {args.out} is not a JSON object")
    with library_errors(f"cannot write {args.out}"):
        result = run(Path(args.out), args.quick, args.sections, args.provider)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    print(f"written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    from fedadapt.bench import PROVIDERS, SECTIONS

    parser = OneLineParser(
        prog="fedadapt",
        description="Federated on-device personalization with adapters over a frozen, "
        "quantized MiniLM.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "simulate",
        help="federated adapter training on Flower's Simulation Engine",
        description=f"{_simulate.__doc__} Writes DIR/report.json, metrics.csv, plots/, "
        "adapter/ and checkpoints/.",
    )
    d.add_argument("--config", help=f"run config (TOML; default {DEFAULT_CONFIG})")
    d.add_argument("--out", type=folder, help=f"run folder (default {DEFAULT_OUT})")
    d.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its checkpoint (with its config; flags and --set "
        "may change only what is safe, such as rounds or baselines)",
    )
    d.add_argument(
        "--continue-from",
        metavar="DIR",
        help="continual learning: a new task (this run's data set) beside the tasks of the run "
        "in DIR, on the same base; DIR's adapters stay as they are, and OUT/tasks.json lists "
        "every task's adapter for one task-indexed export",
    )
    d.add_argument("--rounds", type=int)  # ranges: SimConfig names the key when it refuses
    d.add_argument("--clients", dest="num_clients", type=int, help="number of clients")
    d.add_argument("--clients-per-round", type=int)
    d.add_argument("--strategy", choices=STRATEGIES)
    d.add_argument("--codec", choices=CODECS)
    d.add_argument("--method", choices=FEDERATED_METHODS)
    d.add_argument("--quantize", dest="quantization", choices=QUANTIZATIONS)
    d.add_argument("--seed", type=int)
    d.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run the ClientApps on an existing Ray cluster at ADDR (HOST:PORT, as "
        "`ray start --head` prints it) instead of a private Ray",
    )
    d.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the baselines (with --resume: finish the run without them)",
    )
    d.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key, e.g. --set malicious_fraction=0.2",
    )
    d.set_defaults(func=_simulate)

    dd = sub.add_parser(
        "deploy-demo",
        help="the apps on Flower's Deployment Engine, on loopback",
        description=_deploy_demo.__doc__,
    )
    dd.add_argument("--config", default="simulations/deploy.toml")
    dd.add_argument(
        "--out", type=folder, default="out/deploy", help="certificates, logs and the run folder"
    )
    dd.add_argument("--nodes", type=positive_int, default=3, help="SuperNodes to start")
    dd.set_defaults(func=_deploy_demo)

    c = sub.add_parser(
        "certs", help="TLS certificates and SuperNode keys", description=_certs.__doc__
    )
    c.add_argument("--out", required=True, type=folder)
    c.add_argument(
        "--host", action="append", help="SuperLink host name or IP (repeat; default loopback)"
    )
    c.add_argument(
        "--supernodes", type=non_negative_int, default=3, help="SuperNode key pairs to make"
    )
    c.set_defaults(func=_certs)

    pc = sub.add_parser(
        "package-client",
        help="everything an edge device needs to run a SuperNode",
        description=_package_client.__doc__,
    )
    pc.add_argument("--out", required=True, type=folder, help="a new folder for the package")
    pc.add_argument(
        "--certs", required=True, type=existing_folder, help="the folder `fedadapt certs` wrote"
    )
    pc.add_argument(
        "--node", type=positive_int, default=1, help="which SuperNode key (node-N) to ship"
    )
    pc.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    pc.add_argument(
        "--partition-id", type=non_negative_int, help="data partition (default: node - 1)"
    )
    pc.add_argument("--num-partitions", type=positive_int, help="default: the number of node keys")
    pc.add_argument("--port", type=port, default=9094, help="the SuperNode's own port")
    pc.add_argument("--update-key", help="update-signing public key to trust (fetch)")
    pc.add_argument("--update-url", help="the registry the device fetches signed updates from")
    pc.add_argument(
        "--config",
        help=f"the run config the deployment trains with: the package ships its device graph, "
        f"so the device infers at once (default: {DEPLOY_CONFIG})",
    )
    pc.add_argument(
        "--no-graph",
        action="store_true",
        help="ship no device graph: the device trains but serves no ONNX model",
    )
    pc.add_argument(
        "--no-demo-data",
        action="store_true",
        help="the device trains on its own data/ only: no demo data sets, no flwr-datasets",
    )
    pc.set_defaults(func=_package_client)

    add_update_commands(sub)
    add_device_commands(sub)
    add_rollout_commands(sub)

    add_export_command(sub)

    i = sub.add_parser(
        "infer", help="classify texts on a device folder", description=_infer.__doc__
    )
    i.add_argument("--device-dir", required=True, type=existing_folder)
    i.add_argument("texts", nargs="+", metavar="TEXT")
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

    b = sub.add_parser(
        "bench",
        help="run the benchmark suite and write bench.json",
        description="Run benchmarks; times are medians in ms, memory peak RSS in MB.",
    )
    b.add_argument("--out", required=True, help="JSON file to write (sections are merged in)")
    b.add_argument("--quick", action="store_true", help="fewer repetitions, for smoke runs")
    b.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=["core", "aggregate", "export", "updates", "secagg"],
        help="sections to run (default: all but deploy, which starts a SuperLink and "
        "3 SuperNodes and takes minutes, and scale, which simulates 100- and 1000-client "
        "fleets; --quick: the 100-client one only)",
    )
    b.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="cpu",
        help="ORT execution provider of the export section (cuda: --sections export only, "
        "needs onnxruntime-gpu; written to export_cuda, with fp16)",
    )
    b.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error is one line on stderr and exit code 2 (130 on Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except FedAdaptError as e:
        return _fail(" ".join(str(e).split()), debug)
    except KeyboardInterrupt:
        print("fedadapt: interrupted (a simulation resumes with --resume OUT)", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: a bug, or an error no call site names yet
        return _fail(
            f"{type(e).__name__}: {describe(e)} (rerun with --debug for the traceback)", debug
        )
    return 0


def _fail(message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"fedadapt: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
