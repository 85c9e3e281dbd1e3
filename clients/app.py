"""The Flower `ClientApp`, thin: Flower imports it for every message, so it imports no torch.

Flower 1.42's SuperNode starts a fresh `flwr-clientapp` process per message, which imports
this module after Flower itself. The real handlers (`clients/handlers.py`: training, the
personal state, the replies) import torch, 1-2 s on a 2-core device, so they are imported
only where a message is run:
- on a device started with `fedadapt device run` (node config `device-dir`), by its warm
  worker (`clients/warm_worker.py`), which imported them once: each message and its context
  go there over a Unix socket and the reply and the updated context come back
  (`clients/warm_link.py`). The context's state is copied back onto Flower's own context
  object, which Flower pushes to the SuperNode once the app returns;
- anywhere else, in this process: a simulation (a Ray actor is long-lived, so it pays the
  import once), a SuperNode started without a worker, a worker that is not up yet (its socket
  appears once it has imported), or one that does not answer. A dead worker never loses a
  round: the message runs here, with one line in the log.

Flower's SecAgg+ mod runs here, around the forwarded handler, and keeps its own state in the
same context.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedadapt.clients import warm_link

app = ClientApp()
log = logging.getLogger("fedadapt.clients")


def forward(message: Message, context: Context) -> Message | None:
    """The warm worker's reply, with `context.state` updated in place; None when this
    device has no worker answering (then the caller runs the message itself)."""
    device = context.node_config.get("device-dir")
    if not device:
        return None
    path = warm_link.socket_path(Path(str(device)))
    if path is None or not path.exists():
        return None
    # the round's own deadline: past it the server has moved on, and a hung worker must not
    # keep this message from running here
    timeout = float(context.run_config.get("round_timeout", warm_link.CALL_TIMEOUT_S))
    try:
        reply, updated = warm_link.call(path, message, context, timeout)
    except (OSError, warm_link.LinkError) as e:
        log.warning("warm worker %s did not answer (%s); running the message here", path, e)
        return None
    context.state.clear()
    context.state.update(updated.state)
    return reply


def run(category: str, message: Message, context: Context) -> Message:
    """Run a `category` message: on the warm worker when one answers, else here (importing the
    handlers, and torch, on first use).
    """
    reply = forward(message, context)
    if reply is not None:
        return reply
    from fedadapt.clients.handlers import HANDLERS

    return HANDLERS[category](message, context)


def secagg_when_asked(message: Message, context: Context, call_next) -> Message:
    """Flower's `secaggplus_mod`, for the train messages of a SecAgg+ round only."""
    if RECORD_KEY_CONFIGS in message.content:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Flower's query entry point: forwarded to the `query` handler."""
    return run("query", message, context)


@app.train(mods=[secagg_when_asked])
def train(message: Message, context: Context) -> Message:
    """Flower's train entry point: forwarded to the `train` handler, inside the SecAgg+ mod when
    the message asks for it.
    """
    return run("train", message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Flower's evaluate entry point: forwarded to the `evaluate` handler."""
    return run("evaluate", message, context)
