"""`fedadapt bench`: the benchmark suite (`fedadapt.bench`), merged into a bench.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedadapt.cli.args import library_errors, read_json
from fedadapt.errors import FedAdaptError


def _bench(args: argparse.Namespace) -> None:
    from fedadapt.bench import run

    merged_into = Path(args.out)  # sections are merged into it: it must be a JSON object
    if merged_into.exists() and not isinstance(read_json(merged_into, "the bench file"), dict):
        raise FedAdaptError(f"the bench file {args.out} is not a JSON object")
    with library_errors(f"cannot write {args.out}"):
        result = run(Path(args.out), args.quick, args.sections, args.provider)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:4000])
    print(f"written to {args.out}")


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    """`bench`; its sections and providers come from `fedadapt.bench`."""
    from fedadapt.bench import PROVIDERS, SECTIONS

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
