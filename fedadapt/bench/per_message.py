"""fedadapt's own cost in one ClientApp process, as a deployed SuperNode pays it per message.

Flower 1.42's SuperNode starts a fresh `flwr-clientapp` process per message, which imports
Flower before it loads the app. Run as `python -m fedadapt.bench.per_message CASE [FOLDER]`,
each case prints one JSON line of seconds:

- `thin FOLDER`: what such a process costs on a device with its warm worker. `imports`:
  importing the thin app (`clients/app.py`) after Flower; `forward`: `app.forward` of the
  message and context in FOLDER (Flower protobufs, written by `bench/deploy.py`) to the
  worker listening for FOLDER/dev, round trip and the context copied back. The message is a
  `query` (its handler only reads the node config) carrying a train message's arrays, and the
  context a personal adapter, so the bytes are a round's but no training is timed.
- `base`: what the worker pays on a run's first message, in a warm process as the worker is
  (torch and the handlers imported): building the model over the cached int8 base. Later
  messages of the run reuse it (`model_setup.cached_model`).
- `in-process`: the ClientApp without a worker: importing the handlers (torch included) and
  building the model, in this fresh process.

The caller sets `$FEDADAPT_BASE_CACHE` (as `fedadapt device run` does) or leaves it unset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MESSAGE_FILE, CONTEXT_FILE = "message.pb", "context.pb"


def thin(folder: Path) -> dict:
    """The `thin` case: seconds to import the thin app after Flower, and to forward a message.

    The message and context are read from `folder`, and a warm worker must listen for
    `folder/dev` (`RuntimeError` if it does not answer). Run it in a fresh process, or the
    import time means nothing.
    """
    import flwr.app
    import flwr.clientapp
    import flwr.supernode.runtime.run_clientapp  # noqa: F401  (what flwr-clientapp imports)
    from flwr.common.serde import context_from_proto, message_from_proto
    from flwr.proto.message_pb2 import Context, Message

    t0 = time.perf_counter()
    from fedadapt.clients.app import forward

    t1 = time.perf_counter()
    message = message_from_proto(Message.FromString((folder / MESSAGE_FILE).read_bytes()))
    context = context_from_proto(Context.FromString((folder / CONTEXT_FILE).read_bytes()))
    t2 = time.perf_counter()
    reply = forward(message, context)
    t3 = time.perf_counter()
    if reply is None or reply.has_error():
        raise RuntimeError(f"the warm worker did not answer: {reply}")
    return {"imports": t1 - t0, "forward": t3 - t2}


def base() -> dict:
    """The `base` case: seconds to build the model over the cached base, handlers imported."""
    import fedadapt.clients.handlers  # noqa: F401  (what the worker imported at its start)
    from fedadapt.model_setup import cached_model
    from fedadapt.simconfig import SimConfig

    t0 = time.perf_counter()
    cached_model(SimConfig())
    return {"base": time.perf_counter() - t0}


def in_process() -> dict:
    """The `in-process` case: seconds to import the handlers (torch too), then build the model.

    Run it in a fresh process, or the import time means nothing.
    """
    import flwr.app
    import flwr.clientapp  # noqa: F401

    t0 = time.perf_counter()
    import fedadapt.clients.handlers  # noqa: F401

    t1 = time.perf_counter()
    from fedadapt.model_setup import build_model
    from fedadapt.simconfig import SimConfig

    build_model(SimConfig())
    t2 = time.perf_counter()
    return {"imports": t1 - t0, "base": t2 - t1}


def main(argv: list[str]) -> None:
    """Run the case `argv` names and print its JSON line; a bad usage exits with a message."""
    case = argv[0] if argv else ""
    if case == "thin" and len(argv) == 2:
        out = thin(Path(argv[1]))
    elif case == "base":
        out = base()
    elif case == "in-process":
        out = in_process()
    else:
        raise SystemExit("usage: python -m fedadapt.bench.per_message thin FOLDER|base|in-process")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
