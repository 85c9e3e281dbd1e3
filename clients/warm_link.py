"""What the thin ClientApp and the device's warm worker share: the socket's path, the frames.

Why a worker at all: Flower 1.42's SuperNode starts a fresh `flwr-clientapp` process for every
message (pull one message, load the app, run it, push, exit), and importing torch alone costs
1-2 s on a 2-core device. `fedadapt device run` therefore keeps one warm process
(`clients/warm_worker.py`) that imports torch and the handlers once; the ClientApp Flower
starts (`clients/app.py`) only forwards each message to it. This module imports nothing but
the standard library and Flower, which that process has already imported.

The wire: a request is two frames, the Flower `Message` then its `Context`, each serialized
with Flower's own protobuf serde (never pickle: the worker must not run what it reads). A
reply is the same two frames (the reply and the updated context), or one error frame (UTF-8
text) when the request was refused. A frame is a kind byte and an 8-byte big-endian length,
then that many bytes; a frame over `MAX_FRAME` is refused from its header, before its body is
read.

The socket lives in a 0700 folder of the device folder, itself 0600. Linux limits a socket's
path to 107 bytes; a deeper device folder gets a folder under the temp directory instead,
named by a hash of the device folder so both sides find it without talking. Either side
refuses a folder that is not its own and private: the context carries the personal state.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

FOLDER = "warm"
SOCKET = "worker.sock"
MAX_PATH = 107  # sun_path holds 108 bytes on Linux, one of them the closing NUL
MAX_FRAME = 1 << 30  # a full-model message is ~100 MB; nothing legitimate comes near 1 GiB
HEADER = struct.Struct("!cQ")
MESSAGE, CONTEXT, ERROR = b"M", b"C", b"E"
CONNECT_TIMEOUT_S = 5.0


class LinkError(Exception):
    """A frame that breaks the protocol: oversize, of the wrong kind, not Flower's protobuf,
    or the worker's refusal."""


def socket_path(device_dir: Path) -> Path:
    """Where the warm worker of `device_dir` listens (the same answer on both sides)."""
    device_dir = Path(device_dir).resolve()
    path = device_dir / FOLDER / SOCKET
    if len(os.fsencode(path)) <= MAX_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(device_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"fedadapt-{digest}" / SOCKET


def check_private(folder: Path) -> None:
    """Refuse a socket folder that is a link, not ours, or open to others."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LinkError(f"{folder} is not a private folder of this user (0700)")


def make_private(folder: Path) -> None:
    """Create the socket folder 0700; tighten our own older one; refuse anybody else's."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(folder)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            folder.chmod(0o700)
    check_private(folder)


# -- frames ----------------------------------------------------------------------------------
def send_frame(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(HEADER.pack(kind, len(payload)))
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"the peer closed the connection after {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_frame: int = MAX_FRAME) -> tuple[bytes, bytes]:
    """One frame (kind, payload). Raises `LinkError` for an oversize or unknown frame,
    `ConnectionError` when the peer goes away mid-frame."""
    kind, size = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if kind not in (MESSAGE, CONTEXT, ERROR):
        raise LinkError(f"unknown frame kind {kind!r}")
    if size > max_frame:
        raise LinkError(f"a frame of {size} bytes is over the {max_frame}-byte limit")
    return kind, _recv_exact(sock, size)


def send_pair(sock: socket.socket, message: Message, context: Context) -> None:
    send_frame(sock, MESSAGE, message_to_proto(message).SerializeToString())
    send_frame(sock, CONTEXT, context_to_proto(context).SerializeToString())


def recv_pair(sock: socket.socket, max_frame: int = MAX_FRAME) -> tuple[Message, Context]:
    """A message and its context; the other side's error frame raises `LinkError` with its
    text."""
    kind, payload = recv_frame(sock, max_frame)
    if kind == ERROR:
        raise LinkError(payload.decode("utf-8", "replace"))
    if kind != MESSAGE:
        raise LinkError(f"expected a message frame, got {kind!r}")
    message = _parse(ProtoMessage(), payload, message_from_proto)
    kind, payload = recv_frame(sock, max_frame)
    if kind != CONTEXT:
        raise LinkError(f"expected a context frame, got {kind!r}")
    return message, _parse(ProtoContext(), payload, context_from_proto)


def _parse(proto, payload: bytes, convert):
    try:
        proto.ParseFromString(payload)
        return convert(proto)
    except Exception as e:  # protobuf's DecodeError, or a proto Flower cannot convert
        raise LinkError(f"not a Flower {type(proto).__name__}: {e}") from e


# -- the ClientApp's side --------------------------------------------------------------------
def call(path: Path, message: Message, context: Context) -> tuple[Message, Context]:
    """Send one message to the worker at `path`; its reply and the updated context.

    Raises `OSError` (no worker, a dead one, a connection lost mid-frame) or `LinkError`
    (the worker refused the request). No timeout once sent: the reply waits for the
    handler, as it would in-process.
    """
    check_private(path.parent)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(str(path))
        sock.settimeout(None)
        send_pair(sock, message, context)
        return recv_pair(sock)
