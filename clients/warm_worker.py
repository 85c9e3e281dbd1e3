"""The device's warm worker: torch and the handlers imported once, every message served here.

`fedadapt device run` starts `python -m fedadapt.clients.warm_worker DEVICE_DIR` next to the
SuperNode (both under `fedadapt.supervise`, restarted when they die). Flower 1.42 still starts
a `flwr-clientapp` process per message; that process imports only the thin `clients/app.py`
and forwards the message and its context here over a Unix socket (`clients/warm_link.py`).

The worker binds its socket only once the handlers are imported, so a ClientApp that finds
no socket runs the message itself instead of waiting. It serves one request at a time (a
device has one model to train): read the message and context, run the real handler
(`clients/handlers.py`), send the reply and the updated context. Nothing a client sends can
stop it: an oversize or garbled frame gets an error frame and the connection is closed, a
client gone mid-frame is logged, and a handler that raises gets a Flower error reply, as the
ClientApp process would send.

Models are cached per config (`model_setup.cached_model`): each run's first message builds
its model over the cached int8 base, later messages of the run reuse it. A message of another
run drops the cache (`clear_model_cache`), so a long-lived device does not keep one model
per past run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedadapt.clients import warm_link
from fedadapt.clients.handlers import HANDLERS, wire_reason
from fedadapt.model_setup import clear_model_cache

IO_TIMEOUT_S = 60.0  # one frame, even 100 MB, crosses a local socket in well under a second
log = logging.getLogger("fedadapt.clients.warm_worker")


def run_handler(message: Message, context: Context) -> Message:
    """The handler's reply, or the error reply Flower's ClientApp process would make of an
    exception (same code, same reason text)."""
    category = message.metadata.message_type.split(".")[0]
    try:
        handler = HANDLERS.get(category)
        if handler is None:
            raise ValueError(f"No {category} function registered")
        return handler(message, context)
    except Exception as ex:
        log.exception("%s raised an exception", category)
        # a code, never the exception's text (it may quote the user's data)
        reason = wire_reason(ex)
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


class Worker:
    """One listening socket; `serve` answers one connection at a time until `stop`."""

    def __init__(self, device_dir: Path, max_frame: int = warm_link.MAX_FRAME) -> None:
        self.device_dir = Path(device_dir)
        self.path = warm_link.listen_path(device_dir)
        self.max_frame = max_frame
        self.run_id: int | None = None
        self.stopping = False
        self.path.unlink(missing_ok=True)  # a killed worker's socket: nobody answers on it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.path.chmod(0o600)
        self.sock.listen(8)

    def serve(self) -> None:
        """Accept and answer connections one after another until `close`; a request that fails is
        logged and the next one served. Raises only if the listening socket itself fails.
        """
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.stopping:
                    return
                raise
            with conn:
                try:
                    self.answer(conn)
                except Exception:  # a reply Flower's serde cannot write: this client's loss
                    log.exception("a request failed; serving on")

    def answer(self, conn: socket.socket) -> None:
        """Answer one connection's request: read the message and context, run the handler, send the
        reply and the updated context. A refused frame gets an error frame; a client that leaves
        is logged. A message of a new run drops the model cache first.
        """
        conn.settimeout(IO_TIMEOUT_S)
        try:
            warm_link.check_peer(conn)  # another user's process gets nothing, not even an error
        except (OSError, warm_link.LinkError) as e:
            log.warning("refused a connection: %s", e)
            return
        try:
            message, context = warm_link.recv_pair(conn, self.max_frame)
        except warm_link.LinkError as e:
            log.warning("refused a request: %s", e)
            with contextlib.suppress(OSError):
                warm_link.send_frame(conn, warm_link.ERROR, str(e).encode())
            return
        except OSError as e:  # the client went away mid-frame, or stalled past the timeout
            log.warning("a client left mid-request: %s", e)
            return
        if context.run_id != self.run_id:
            clear_model_cache()
            self.run_id = context.run_id
        t0 = time.perf_counter()
        reply = run_handler(message, context)
        log.info("%s in %.3f s", message.metadata.message_type, time.perf_counter() - t0)
        try:
            warm_link.send_pair(conn, reply, context)
        except OSError as e:
            log.warning("the client left before its reply: %s", e)

    def close(self) -> None:
        """Stop listening and remove the socket, so ClientApps run messages themselves. Safe from a
        signal handler: a request being answered is finished first.
        """
        self.stopping = True
        self.sock.close()
        warm_link.forget(self.device_dir, self.path)


def _stop_on(signals: tuple[int, ...], worker: Worker) -> Callable[[], None]:
    def on_signal(signum: int, frame: object) -> None:
        worker.close()  # accept() then fails and `serve` returns; a handler finishes first

    for s in signals:
        signal.signal(s, on_signal)
    return worker.close


def main(argv: list[str]) -> int:
    """`python -m fedadapt.clients.warm_worker DEVICE_DIR`: serve until SIGTERM or SIGINT.

    Returns the exit code: 0 after a stop, 1 if the socket cannot be set up, 2 on bad usage.
    """
    if len(argv) != 1:
        print("usage: python -m fedadapt.clients.warm_worker DEVICE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="[warm-worker %(asctime)s] %(levelname)s %(message)s"
    )
    try:
        worker = Worker(Path(argv[0]))
    except (OSError, warm_link.LinkError) as e:
        print(f"warm worker: cannot listen: {e}", file=sys.stderr)
        return 1
    close = _stop_on((signal.SIGTERM, signal.SIGINT), worker)
    log.info("listening on %s (pid %d)", worker.path, os.getpid())
    try:
        worker.serve()
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
