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
        cfg = simulate.resume_config(Path(args.resume), rounds=args.rounds)
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


def _bench(args: argparse.Namespace) -> None:
    from fedadapt.bench import run

    result = run(Path(args.out), quick=args.quick, sections=args.sections)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    print(f"written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedadapt",
        description="Federated on-device personalization with adapters over a frozen, "
        "quantized MiniLM.",
    )
    sub = p.add_subparsers(dest="command", required=True)

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
    d.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, e.g. --set malicious_fraction=0.2")
    d.set_defaults(func=_simulate)

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
        default=["core", "aggregate"],
        help="sections to run (default: all)",
    )
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FedAdaptError as e:
        print(f"fedadapt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
