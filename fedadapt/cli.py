"""The `fedadapt` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import STRATEGIES


def _simulate(args: argparse.Namespace) -> None:
    """Run a federated simulation on Flower's Simulation Engine and write its report."""
    from fedadapt import simulate
    from fedadapt.simconfig import SimConfig

    if args.resume:
        baselines = False if args.no_baselines else None
        cfg = simulate.resume_config(Path(args.resume), rounds=args.rounds, baselines=baselines)
    else:
        keys = (
            "rounds",
            "num_clients",
            "clients_per_round",
            "strategy",
            "codec",
            "method",
            "quantization",
            "seed",
        )
        overrides = {k: getattr(args, k) for k in keys}
        overrides["baselines"] = False if args.no_baselines else None
        overrides.update(_parse_sets(args.set))
        cfg = SimConfig.load(args.config, **overrides, out=str(Path(args.out).resolve()))
    out = simulate.run(cfg)
    print(f"report: {out / 'report.json'}  plots: {out / 'plots'}  adapter: {out / 'adapter'}")


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
    paths = make_certs(args.out, hosts, args.supernodes)
    print(f"CA: {paths['ca']}  SuperLink: {paths['cert']} ({', '.join(hosts)})")
    print(f"SuperNode keys: {Path(args.out) / 'supernodes'} (register each *.pub)")


def _package_client(args: argparse.Namespace) -> None:
    """Write what an edge device needs to join a deployment as one SuperNode: the fedadapt
    wheel and pinned requirements, the base model files, the CA certificate and the node's
    key, its node config, install.sh and start.sh. Copy the folder to the device, run
    install.sh once, then start.sh."""
    from fedadapt.package import package_client

    out = package_client(
        Path(args.out),
        Path(args.certs),
        args.node,
        args.superlink,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        port=args.port,
        update_key=Path(args.update_key) if args.update_key else None,
    )
    print(f"client package: {out} (on the device: {out}/install.sh, then {out}/start.sh)")


def _parse_sets(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs, VALUE read as TOML (numbers, booleans, quoted strings) or text."""
    import tomllib

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise FedAdaptError(f"--set wants KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def _passphrase(env: str | None) -> bytes | None:
    import os

    if env is None:
        return None
    if env not in os.environ:
        raise FedAdaptError(f"the passphrase variable {env} is not set")
    return os.environ[env].encode()


def _keygen(args: argparse.Namespace) -> None:
    """Make an Ed25519 key pair for signing adapter updates (private key mode 0600)."""
    from fedadapt.keys import key_id, keygen, load_public

    priv, pub = keygen(args.out, _passphrase(args.passphrase_env))
    print(f"private key: {priv}\npublic key:  {pub}\nkey id:      {key_id(load_public(pub))}")


def _publish(args: argparse.Namespace) -> None:
    """Publish an adapter folder as the next signed version in a static-file registry."""
    import datetime as dt

    from fedadapt.keys import load_private
    from fedadapt.server.publish import publish

    key = load_private(args.key, _passphrase(args.passphrase_env))
    entry = publish(
        args.adapter,
        args.registry,
        key,
        name=args.name,
        expires_in=dt.timedelta(days=args.expires_days),
    )
    deltas = ", ".join(
        f"from v{d['from_version']}: {d['payload_bytes']} B" for d in entry["deltas"]
    )
    print(
        f"published version {entry['version']}: full {entry['full']['payload_bytes']} B"
        + (f"; deltas {deltas}" if deltas else "")
    )


def _serve_updates(args: argparse.Namespace) -> None:
    """Serve a registry over HTTP (Range requests, bounded connections, no path escapes)."""
    from fedadapt.server.update_service import UpdateServer

    server = UpdateServer(Path(args.registry), args.host, args.port, args.max_connections)
    print(f"serving {server.root} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _fetch(args: argparse.Namespace) -> None:
    """Fetch the newest adapter update, verify it and apply it atomically."""
    from fedadapt.clients.runtime import RUNTIME_FILE
    from fedadapt.clients.updater import fetch
    from fedadapt.keys import load_public

    runtime = Path(args.device_dir) / RUNTIME_FILE
    if runtime.exists():  # an edge device: its installed graph names its base (no torch here)
        base = json.loads(runtime.read_text())["base_sha256"]
    else:
        from fedadapt.base_model import base_sha256

        base = base_sha256()
    trusted = [load_public(p) for p in args.trust]
    m = fetch(args.url, args.device_dir, trusted, base, timeout=args.timeout)
    if m is None:
        print("already up to date")
    else:
        print(f"installed {m.adapter_name} version {m.version} ({m.kind}, {m.payload_bytes} B)")


def _rollback(args: argparse.Namespace) -> None:
    """Go back to the previously installed adapter version."""
    from fedadapt.clients.updater import DeviceStore

    print(f"rolled back to version {DeviceStore(args.device_dir).rollback()}")


def _export(args: argparse.Namespace) -> None:
    """Export an adapter over the base to ONNX: adapter tensors stay swappable graph inputs,
    the base MatMuls are quantized by ONNX Runtime, and a device folder is written."""
    from fedadapt.export.exporter import ExportOptions, export

    fixed = None
    if args.fixed_shape:
        try:
            b, s = (int(x) for x in args.fixed_shape.split(","))
        except ValueError as e:
            raise FedAdaptError(
                f"--fixed-shape wants B,S (e.g. 1,128), got {args.fixed_shape!r}"
            ) from e
        fixed = (b, s)
    opts = ExportOptions(
        quantize=args.quantize,
        merge_lora=args.merge_lora,
        fixed_shape=fixed,
        ort_format=args.ort,
        max_length=args.max_length,
        measure=not args.no_measure,
        decompose=tuple(args.decompose),
    )
    report = export(args.adapter, args.out, opts)
    brief = {k: report[k] for k in ("sizes", "parity_max_abs", "latency", "swap_ms") if k in report}
    print(json.dumps(brief, indent=1))
    print(f"report: {Path(args.out) / 'export_report.json'}")


def _infer(args: argparse.Namespace) -> None:
    """Classify texts with ONNX Runtime and the device's installed adapter (no torch needed)."""
    from fedadapt.clients.runtime import EdgeRuntime

    rt = EdgeRuntime(args.device_dir, threads=args.threads)
    if args.adapter:
        rt.activate(args.adapter)
    for p in rt.predict(args.texts, task=args.task):
        scores = " ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
        print(f"{p.label}\t{scores}\t{p.text}")
    print(f"(adapter version {rt.adapter_version})", file=sys.stderr)


def _bench(args: argparse.Namespace) -> None:
    from fedadapt.bench import run

    result = run(Path(args.out), quick=args.quick, sections=args.sections)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    print(f"written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedadapt",
        description="Federated on-device personalization with adapters over a frozen, "
        "quantized MiniLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "simulate",
        help="federated adapter training on Flower's Simulation Engine",
        description=f"{_simulate.__doc__} Writes DIR/report.json, metrics.csv, plots/, "
        "adapter/ and checkpoints/.",
    )
    d.add_argument("--config", default="simulations/quick.toml", help="run config (TOML)")
    d.add_argument("--out", default="out/quick", help="run folder")
    d.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    d.add_argument("--rounds", type=int)
    d.add_argument("--clients", dest="num_clients", type=int, help="number of clients")
    d.add_argument("--clients-per-round", type=int)
    d.add_argument("--strategy", choices=STRATEGIES)
    d.add_argument("--codec", choices=["fp32", "fp16", "int8"])
    d.add_argument("--method", choices=["bottleneck", "lora"])
    d.add_argument("--quantize", dest="quantization", choices=["none", "int8", "int4"])
    d.add_argument("--seed", type=int)
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
    dd.add_argument("--out", default="out/deploy", help="certificates, logs and the run folder")
    dd.add_argument("--nodes", type=int, default=3, help="SuperNodes to start")
    dd.set_defaults(func=_deploy_demo)

    c = sub.add_parser(
        "certs", help="TLS certificates and SuperNode keys", description=_certs.__doc__
    )
    c.add_argument("--out", required=True)
    c.add_argument(
        "--host", action="append", help="SuperLink host name or IP (repeat; default loopback)"
    )
    c.add_argument("--supernodes", type=int, default=3, help="SuperNode key pairs to make")
    c.set_defaults(func=_certs)

    pc = sub.add_parser(
        "package-client",
        help="everything an edge device needs to run a SuperNode",
        description=_package_client.__doc__,
    )
    pc.add_argument("--out", required=True, help="a new folder for the package")
    pc.add_argument("--certs", required=True, help="the folder `fedadapt certs` wrote")
    pc.add_argument("--node", type=int, default=1, help="which SuperNode key (node-N) to ship")
    pc.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    pc.add_argument("--partition-id", type=int, help="data partition (default: node - 1)")
    pc.add_argument("--num-partitions", type=int, help="default: the number of node keys")
    pc.add_argument("--port", type=int, default=9094, help="the SuperNode's own port")
    pc.add_argument("--update-key", help="update-signing public key to trust (fetch)")
    pc.set_defaults(func=_package_client)

    k = sub.add_parser(
        "keygen", help="make an Ed25519 signing key pair", description=_keygen.__doc__
    )
    k.add_argument("--out", required=True, help="folder for the key files")
    k.add_argument("--passphrase-env", metavar="VAR", help="encrypt with the passphrase in $VAR")
    k.set_defaults(func=_keygen)

    p = sub.add_parser(
        "publish", help="publish a signed adapter update", description=_publish.__doc__
    )
    p.add_argument("--adapter", required=True, help="adapter folder")
    p.add_argument("--registry", required=True, help="registry folder (static files)")
    p.add_argument("--key", required=True, help="private key file")
    p.add_argument("--passphrase-env", metavar="VAR")
    p.add_argument("--name", help="adapter name (default: the registry's, or the folder's)")
    p.add_argument("--expires-days", type=float, default=30.0)
    p.set_defaults(func=_publish)

    s = sub.add_parser(
        "serve-updates", help="serve a registry over HTTP", description=_serve_updates.__doc__
    )
    s.add_argument("--registry", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8787)
    s.add_argument("--max-connections", type=int, default=64)
    s.set_defaults(func=_serve_updates)

    f = sub.add_parser(
        "fetch", help="fetch, verify and apply the newest update", description=_fetch.__doc__
    )
    f.add_argument("--url", required=True, help="registry URL")
    f.add_argument("--device-dir", required=True)
    f.add_argument("--trust", required=True, action="append", help="trusted public key (repeat)")
    f.add_argument("--timeout", type=float, default=30.0)
    f.set_defaults(func=_fetch)

    r = sub.add_parser(
        "rollback", help="go back one adapter version", description=_rollback.__doc__
    )
    r.add_argument("--device-dir", required=True)
    r.set_defaults(func=_rollback)

    e = sub.add_parser("export", help="export an adapter to ONNX", description=_export.__doc__)
    e.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="adapter folder (e.g. out/quick/adapter); repeat for a task-indexed graph of "
        "several same-shaped adapters (`infer --task N` picks one)",
    )
    e.add_argument("--out", required=True, help="device folder to write")
    e.add_argument("--quantize", choices=["none", "int8", "int4"], default="int8")
    e.add_argument(
        "--merge-lora", action="store_true", help="fold a fixed, global LoRA into the base"
    )
    e.add_argument("--fixed-shape", metavar="B,S", help="fix batch and sequence (mobile EPs)")
    e.add_argument("--ort", action="store_true", help="also write model.ort for ORT Mobile")
    e.add_argument("--max-length", type=int, default=128, help="token limit at inference")
    e.add_argument(
        "--decompose",
        nargs="+",
        default=[],
        choices=["layernorm", "gelu-tanh"],
        help="rewrite ops NNAPI lacks: layernorm (exact), gelu-tanh (approximate GELU)",
    )
    e.add_argument("--no-measure", action="store_true", help="skip latency/parity/mobile checks")
    e.set_defaults(func=_export)

    i = sub.add_parser(
        "infer", help="classify texts on a device folder", description=_infer.__doc__
    )
    i.add_argument("--device-dir", required=True)
    i.add_argument("texts", nargs="+", metavar="TEXT")
    i.add_argument("--adapter", help="use this .onnx_adapter instead of the installed one")
    i.add_argument("--task", type=int, help="task index, for a stacked multi-adapter graph")
    i.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
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
        default=["core", "aggregate", "export", "updates", "secagg"],
        help="sections to run (default: all but deploy, which starts a SuperLink and "
        "3 SuperNodes and takes minutes)",
    )
    b.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FedAdaptError as e:
        print(f"fedadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedadapt: interrupted (a simulation resumes with --resume OUT)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
