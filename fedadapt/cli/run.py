"""The commands that start runs and prepare a deployment: `simulate`, `deploy-demo`,
`certs` and `package-client`. Each is a thin shell over a `fedadapt.launch` function."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedadapt.cli.args import (
    add_passphrase_option,
    existing_folder,
    folder,
    library_errors,
    non_negative_int,
    passphrase,
    port,
    positive_float,
    positive_int,
)
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import CODECS, FEDERATED_METHODS, QUANTIZATIONS, STRATEGIES, read_toml

DEPLOY_CONFIG = "simulations/deploy.toml"  # what deploy-demo and docs/how-to/deploy.md run

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
    from fedadapt import continual
    from fedadapt.launch import simulate
    from fedadapt.launch.simulate import project_dir
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
        config = args.config or project_dir() / DEFAULT_CONFIG
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
    from fedadapt.launch import deploy
    from fedadapt.simconfig import SimConfig

    out = Path(args.out).resolve()
    cfg = SimConfig.load(args.config, num_clients=args.nodes, out=str(out / "run"))
    run = deploy.demo(cfg, out, nodes=args.nodes)
    print(f"report: {run / 'report.json'}")


def _certs(args: argparse.Namespace) -> None:
    """Make a CA, a SuperLink TLS certificate and SuperNode key pairs (keys mode 0600, the CA
    key encrypted with the passphrase in $VAR); `renew` re-issues both certificates for
    --days more with the same keys, so no SuperNode needs a new key or registration."""
    from fedadapt.launch.certs import make_certs, renew_certs

    secret = passphrase(args.passphrase_env)
    if secret is None:
        raise FedAdaptError(
            "--passphrase-env VAR is needed: the CA key is written encrypted with the "
            "passphrase in $VAR (renew reads it with the same one)"
        )
    if args.action == "renew":
        with library_errors(f"cannot renew the certificates in {args.out}"):
            paths = renew_certs(args.out, args.days, secret)
        print(f"renewed for {args.days} days: {paths['ca']}, {paths['cert']}")
        print("ship the new ca.crt to every device before the old one expires")
        return
    hosts = args.host or ["127.0.0.1", "localhost"]
    with library_errors(f"cannot write certificates into {args.out}"):
        paths = make_certs(args.out, hosts, args.supernodes, args.days, secret)
    print(f"CA: {paths['ca']}  SuperLink: {paths['cert']} ({', '.join(hosts)})")
    print(f"SuperNode keys: {Path(args.out) / 'supernodes'} (register each *.pub)")


def _package_client(args: argparse.Namespace) -> None:
    """Write what an edge device needs to join a deployment as one SuperNode: the fedadapt
    wheel and pinned requirements, the base model files, the CA certificate and the node's
    key, its node config, install.sh and start.sh. Copy the folder to the device, run
    install.sh once, then start.sh."""
    from fedadapt.launch.package import package_client
    from fedadapt.launch.simulate import project_dir

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
            update_interval=args.update_interval,
            update_registry=Path(args.update_registry) if args.update_registry else None,
            config=config,
            demo_data=not args.no_demo_data,
        )
    print(f"client package: {out} (on the device: {out}/install.sh, then {out}/start.sh)")


def _check_config(args: argparse.Namespace) -> None:
    """Check a run config with fedadapt's typed rules before it is submitted: Flower's SuperLink
    answers a key it does not know with "[code: 15] Invalid run configuration." and names the
    key only in its own log, while this names it, with the nearest known key, in one line."""
    from fedadapt.simconfig import SimConfig

    sets = _parse_sets(args.set)
    raw = {**read_toml(Path(args.file)), **sets}  # what SimConfig.load does, read once
    cfg = SimConfig.from_dict(raw)
    summary = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in sorted(raw))
    print(f"{args.file}: a valid run config ({summary or 'every key at its default'})")


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


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    """`simulate`, `check-config`, `deploy-demo`, `certs` and `package-client`."""
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
    d.add_argument("--rounds", type=int, help="federated rounds (config key rounds)")
    d.add_argument("--clients", dest="num_clients", type=int, help="number of clients")
    d.add_argument("--clients-per-round", type=int, help="clients sampled for training each round")
    d.add_argument("--strategy", choices=STRATEGIES, help="server aggregation")
    d.add_argument("--codec", choices=CODECS, help="how a client encodes its delta")
    d.add_argument("--method", choices=FEDERATED_METHODS, help="adapter method to train")
    d.add_argument(
        "--quantize",
        dest="quantization",
        choices=QUANTIZATIONS,
        help="weight-only quantization of the frozen base",
    )
    d.add_argument("--seed", type=int, help="seeds the client draw, the splits and training")
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

    cc = sub.add_parser(
        "check-config",
        help="check a run config before `flwr run` submits it",
        description=_check_config.__doc__,
    )
    cc.add_argument("file", help="the run config (TOML) to check")
    cc.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key as `flwr run --run-config` would override it",
    )
    cc.set_defaults(func=_check_config)

    dd = sub.add_parser(
        "deploy-demo",
        help="the apps on Flower's Deployment Engine, on loopback",
        description=_deploy_demo.__doc__,
    )
    dd.add_argument("--config", default=DEPLOY_CONFIG, help="run config (TOML)")
    dd.add_argument(
        "--out", type=folder, default="out/deploy", help="certificates, logs and the run folder"
    )
    dd.add_argument("--nodes", type=positive_int, default=3, help="SuperNodes to start")
    dd.set_defaults(func=_deploy_demo)

    c = sub.add_parser(
        "certs", help="TLS certificates and SuperNode keys", description=_certs.__doc__
    )
    c.add_argument(
        "action",
        nargs="?",
        choices=("make", "renew"),
        default="make",
        help="make a new CA and keys (the default), or renew the certificates of --out",
    )
    c.add_argument(
        "--out", required=True, type=folder, help="a folder for the certificates and keys"
    )
    add_passphrase_option(c, "the CA key's passphrase is in $VAR (required)")
    c.add_argument(
        "--days", type=positive_int, default=365, help="how long the certificates are valid"
    )
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
        "--update-registry",
        type=existing_folder,
        help="that registry's folder: binds the device to its id and adapter, so it refuses "
        "another registry's files and a first install of another adapter",
    )
    pc.add_argument(
        "--update-interval",
        type=positive_float,
        default=3600.0,
        help="seconds between the device's update checks (a failed one is retried sooner)",
    )
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
