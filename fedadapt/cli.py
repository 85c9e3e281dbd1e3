"""The `fedadapt` command line. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedadapt.errors import FedAdaptError


def _demo(args: argparse.Namespace) -> None:
    """Train an adapter for one Rotten Tomatoes client; print accuracy before and after."""
    from fedadapt.adapter_files import save_adapter
    from fedadapt.adapters import METHODS, AdapterModel
    from fedadapt.base_model import load_base, load_tokenizer
    from fedadapt.data import rotten_tomatoes
    from fedadapt.train import TrainConfig, evaluate, train

    clients = rotten_tomatoes.load_clients(num_clients=args.clients, seed=args.seed)
    client = max(clients, key=lambda c: (len(c.train_texts), c.client_id))
    base = load_base(args.quantize)
    model = AdapterModel(base)
    model.add_adapter("demo", METHODS[args.method](), num_labels=client.num_labels)
    model.train_adapter("demo")
    tok = load_tokenizer()
    majority = sum(y == client.majority_label() for y in client.test_labels) / len(
        client.test_labels
    )
    print(
        f"base {base.quantization}: {base.params / 1e6:.1f}M params, "
        f"{base.bytes_in_memory / 1e6:.1f} MB in memory (fp32 {base.bytes_fp32 / 1e6:.1f} MB)"
    )
    print(
        f"adapter {args.method}: {model.num_trainable()} trainable params "
        f"({model.num_trainable() / base.params:.2%} of the base)"
    )
    print(
        f"client {client.client_id!r}: {len(client.train_texts)} train / "
        f"{len(client.test_texts)} test snippets; its majority label scores {majority:.2f}"
    )
    before = evaluate(model, tok, client.test_texts, client.test_labels)["accuracy"]
    print(f"accuracy before training: {before:.2f}")
    for epoch in range(args.epochs):
        cfg = TrainConfig(epochs=1, batch_size=8, seed=args.seed + epoch)
        stats = train(model, tok, client.train_texts, client.train_labels, cfg)
        acc = evaluate(model, tok, client.test_texts, client.test_labels)["accuracy"]
        print(
            f"epoch {epoch + 1}/{args.epochs}: train loss {stats['train_loss']:.3f}, "
            f"test accuracy {acc:.2f}",
            flush=True,
        )
    out = save_adapter(model, "demo", Path(args.out) / "adapter")
    print(f"adapter written to {out}")


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
        "demo",
        help="train one adapter on Rotten Tomatoes and show the gain",
        description=_demo.__doc__,
    )
    d.add_argument("--out", default="out/demo", help="folder for the trained adapter")
    d.add_argument(
        "--method", default="bottleneck", choices=["bottleneck", "lora", "ia3", "bitfit"]
    )
    d.add_argument("--quantize", default="int8", choices=["none", "int8", "int4"])
    d.add_argument("--clients", type=int, default=20, help="movies to draw data from")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)

    b = sub.add_parser(
        "bench",
        help="run the benchmark suite and write bench.json",
        description="Run benchmarks; times are medians in ms, memory peak RSS in MB.",
    )
    b.add_argument("--out", required=True, help="JSON file to write (sections are merged in)")
    b.add_argument("--quick", action="store_true", help="fewer repetitions, for smoke runs")
    b.add_argument("--sections", nargs="+", default=["core"], help="sections to run")
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
