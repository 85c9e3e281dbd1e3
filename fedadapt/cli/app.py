"""The `fedadapt` command line. Each subcommand is a thin shell over a library function.

Every failure a user can cause (a bad argument, a missing or corrupt file, a refused
connection) ends as one line, `fedadapt: error: ...`, and exit code 2; `--debug` adds the
traceback. Each command group has its module here (`run`, `updates`, `device`, `rollout`,
`export`, `bench`, `console`); what they share (argument types, the one-line errors) is `args`.
"""

from __future__ import annotations

import argparse
import sys

from fedadapt.cli.args import OneLineParser, describe
from fedadapt.cli.bench import add_bench_command
from fedadapt.cli.console import add_console_command
from fedadapt.cli.device import add_device_commands, add_infer_command
from fedadapt.cli.export import add_export_command
from fedadapt.cli.rollout import add_rollout_commands
from fedadapt.cli.run import add_run_commands
from fedadapt.cli.updates import add_update_commands
from fedadapt.errors import FedAdaptError


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one module of `fedadapt.cli` per command group."""
    parser = OneLineParser(
        prog="fedadapt",
        description="Federated on-device personalization with adapters over a frozen, "
        "quantized MiniLM.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_commands(sub)
    add_update_commands(sub)
    add_device_commands(sub)
    add_rollout_commands(sub)
    add_export_command(sub)
    add_infer_command(sub)
    add_bench_command(sub)
    add_console_command(sub)
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
