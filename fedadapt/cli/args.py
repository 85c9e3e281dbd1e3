"""What the command line checks before any work starts, and how a library's error becomes
one line: argument types with their allowed range, a parser whose errors are one line, and
`library_errors`, which names the action a library call failed in.

A user sees `fedadapt: error: ...` and an exit code of 2, never a traceback or a usage block:
the line names what is wrong (the argument, the file, the URL) and what is allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from fedadapt.errors import FedAdaptError


class ArgumentError(FedAdaptError):
    """A command-line argument is malformed or out of range."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with errors raised as one-line `ArgumentError`s instead of a usage block
    and `sys.exit`, so `main` prints every failure the same way."""

    def error(self, message: str) -> NoReturn:
        """argparse's error hook: raise `ArgumentError` with a pointer to `--help`, never exit."""
        raise ArgumentError(f"{message} (see `{self.prog} --help`)")


def _typed(name: str, parse: Callable[[str], float], ok: Callable[[float], bool]):
    """An argparse type: `parse` the text, then refuse it unless `ok`, naming `name`."""

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {name}")
        return value

    convert.__name__ = name  # argparse names the type in its messages
    return convert


port = _typed("a port (1..65535)", int, lambda v: 1 <= v <= 65535)
positive_int = _typed("an integer >= 1", int, lambda v: v >= 1)
non_negative_int = _typed("an integer >= 0", int, lambda v: v >= 0)
positive_float = _typed("a number > 0", float, lambda v: 0 < v < float("inf"))


def folder(text: str) -> str:
    """A folder to write into: it may not exist yet, but it may not be a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def existing_folder(text: str) -> str:
    """A folder that must already exist (a registry to serve, a device folder to read)."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


def _library_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions libraries raise on bad input (files, JSON, TOML, HTTP, safetensors;
    ONNX Runtime's are told by their module).
    httpx and safetensors are imported only when an error is being classified."""
    types: list[type[BaseException]] = [
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        tomllib.TOMLDecodeError,
    ]
    with contextlib.suppress(ImportError):
        import httpx

        types += [httpx.HTTPError, httpx.InvalidURL]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        types.append(SafetensorError)
    return tuple(types)


def describe(e: BaseException) -> str:
    """One line for a library's error: an OSError as `strerror: filename`, others as text."""
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}"
    if isinstance(e, KeyError) and e.args:
        return f"missing key {e.args[0]!r}"
    text = " ".join(str(e).split()) or type(e).__name__
    return text


@contextlib.contextmanager
def library_errors(what: str, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Inside the block, a library's error on bad input (and any of `also`, for call sites
    that read a file whose shape is the problem) becomes a FedAdaptError `what: reason`."""
    try:
        yield
    except FedAdaptError:
        raise
    except Exception as e:
        from_ort = type(e).__module__.startswith("onnxruntime")  # a model it cannot load
        if not (from_ort or isinstance(e, _library_error_types() + also)):
            raise
        raise FedAdaptError(f"{what}: {describe(e)}") from e


# What a device folder or a registry holds that a malformed file turns into, besides
# JSON errors: a missing key, a value of the wrong type.
SHAPE_ERRORS = (KeyError, TypeError, AttributeError, IndexError)


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value; unreadable or invalid, a FedAdaptError naming `what` and `path`."""
    with library_errors(f"{what} {path} is unreadable"):
        return json.loads(path.read_text(encoding="utf-8"))


def passphrase(env: str | None) -> bytes | None:
    """The passphrase in the environment variable `env` (None: the key is not encrypted);
    never an argument, so it stays out of the process list and the shell history."""
    if env is None:
        return None
    if env not in os.environ:
        raise FedAdaptError(f"the passphrase variable {env} is not set")
    if not os.environ[env]:  # an empty passphrase would write the key in the clear
        raise FedAdaptError(f"the passphrase variable {env} is empty")
    return os.environ[env].encode()


def summary(doc: str | None) -> str:
    """A command's one-line help from its docstring's first line, in the style of every other
    help text: lower case, no closing period."""
    line = doc.strip().splitlines()[0] if doc and doc.strip() else ""
    return (line[:1].lower() + line[1:]).rstrip(".")


def add_passphrase_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--passphrase-env VAR`, the way every command that reads or writes a key takes it
    (read with `passphrase`)."""
    text = help or "the key's passphrase is in $VAR (if encrypted)"
    parser.add_argument("--passphrase-env", metavar="VAR", help=text)


def add_listen_options(parser: argparse.ArgumentParser) -> None:
    """`--host`, `--port`, `--max-connections` and `--max-per-client` of a service a device
    reaches (`per_client` reads the last)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=port, default=8787, help="port to listen on")
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=64,
        help="connections open at once; an idle keep-alive one gives its slot to a new one, "
        "else more are answered 503",
    )
    parser.add_argument(
        "--max-per-client",
        type=positive_int,
        help="connections one client address may hold (default: half of --max-connections; "
        "devices behind one NAT share an address)",
    )


def per_client(args: argparse.Namespace) -> int:
    """`--max-per-client`, or half of `--max-connections` (at least 1) when not given."""
    return args.max_per_client or max(1, args.max_connections // 2)
