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
then that many bytes; a frame over `MAX_FRAME` is refused from its header, and a body is read
in pieces as it arrives, so a header alone allocates nothing.

The socket lives in a 0700 folder of the device folder, itself 0600. Linux limits a socket's
path to 107 bytes; for a deeper device folder the worker makes a folder of its own under the
temp directory, with a random name (`mkdtemp`: nobody can take it first), and records its path
in the device folder, where the ClientApp reads it. Either side refuses a folder that is not
its own and private, and a peer that runs as another user (`SO_PEERCRED`): the context
carries the personal state. A call has a deadline; past it the ClientApp runs the message
itself, so a hung worker cannot stall a round.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import tempfile
import time
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
CALL_TIMEOUT_S = 900.0  # a whole call, by default; the ClientApp passes the round's timeout
CHUNK = 1 << 20  # a frame's body is read (and allocated) this much at a time
FALLBACK = "fallback"  # in the device's warm folder: the path of a socket kept elsewhere
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class LinkError(Exception):
    """A frame that breaks the protocol: oversize, of the wrong kind, not Flower's protobuf,
    or the worker's refusal."""


def _in_folder(device_dir: Path) -> Path:
    return Path(device_dir).resolve() / FOLDER / SOCKET


def socket_path(device_dir: Path) -> Path | None:
    """Where the warm worker of `device_dir` listens: in the device folder, or where the
    worker recorded its own folder when that path is too long; None when it recorded none."""
    path = _in_folder(device_dir)
    if len(os.fsencode(path)) <= MAX_PATH:
        return path
    pointer = path.parent / FALLBACK
    try:
        check_private(pointer.parent)
        st = os.lstat(pointer)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        return Path(pointer.read_text(encoding="utf-8").strip())
    except (OSError, LinkError, UnicodeDecodeError):
        return None


def listen_path(device_dir: Path) -> Path:
    """Where a new worker of `device_dir` listens: `socket_path`'s place, or, for a deep
    device folder, a fresh private folder with an unguessable name, recorded for the ClientApp.
    """
    path = _in_folder(device_dir)
    make_private(path.parent)
    if len(os.fsencode(path)) <= MAX_PATH:
        return path
    folder = Path(tempfile.mkdtemp(prefix="fedadapt-warm-"))  # 0700, a random name
    pointer, tmp = path.parent / FALLBACK, path.parent / f".{FALLBACK}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{folder / SOCKET}\n")
    os.replace(tmp, pointer)
    return folder / SOCKET


def forget(device_dir: Path, path: Path) -> None:
    """Remove a stopped worker's socket, and the folder and record of a fallback one."""
    path.unlink(missing_ok=True)
    if path.parent != _in_folder(device_dir).parent:
        shutil.rmtree(path.parent, ignore_errors=True)
        (_in_folder(device_dir).parent / FALLBACK).unlink(missing_ok=True)


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a connected AF_UNIX socket."""
    _, uid, _ = PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    )
    return uid


def check_peer(sock: socket.socket) -> None:
    """Refuse a peer that runs as another user: it could read or forge the personal state."""
    uid = peer_uid(sock)
    if uid != os.getuid():
        raise LinkError(f"the peer runs as user {uid}, not as this user ({os.getuid()})")


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
    """Write one frame: the kind byte, the payload's 8-byte big-endian length, the payload."""
    sock.sendall(HEADER.pack(kind, len(payload)))
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """`n` bytes, read and allocated a piece at a time: a peer that announces a large frame
    and sends little costs what it sent, not what it announced. Past `deadline` (a
    `time.monotonic()` value) the read fails with `TimeoutError`."""
    parts, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within the call's deadline ({got} of {n} bytes)")
            sock.settimeout(left)
        part = sock.recv(min(CHUNK, n - got))
        if not part:
            raise ConnectionError(f"the peer closed the connection after {got} of {n} bytes")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def recv_frame(
    sock: socket.socket, max_frame: int = MAX_FRAME, deadline: float | None = None
) -> tuple[bytes, bytes]:
    """One frame (kind, payload). Raises `LinkError` for an oversize or unknown frame,
    `ConnectionError` when the peer goes away mid-frame, `TimeoutError` past `deadline`."""
    kind, size = HEADER.unpack(_recv_exact(sock, HEADER.size, deadline))
    if kind not in (MESSAGE, CONTEXT, ERROR):
        raise LinkError(f"unknown frame kind {kind!r}")
    if size > max_frame:
        raise LinkError(f"a frame of {size} bytes is over the {max_frame}-byte limit")
    return kind, _recv_exact(sock, size, deadline)


def send_pair(sock: socket.socket, message: Message, context: Context) -> None:
    """Send `message` then `context` as two frames, in Flower's protobuf serde; what `recv_pair`
    reads on the other side.
    """
    send_frame(sock, MESSAGE, message_to_proto(message).SerializeToString())
    send_frame(sock, CONTEXT, context_to_proto(context).SerializeToString())


def recv_pair(
    sock: socket.socket, max_frame: int = MAX_FRAME, deadline: float | None = None
) -> tuple[Message, Context]:
    """A message and its context; the other side's error frame raises `LinkError` with its
    text."""
    kind, payload = recv_frame(sock, max_frame, deadline)
    if kind == ERROR:
        raise LinkError(payload.decode("utf-8", "replace"))
    if kind != MESSAGE:
        raise LinkError(f"expected a message frame, got {kind!r}")
    message = _parse(ProtoMessage(), payload, message_from_proto)
    kind, payload = recv_frame(sock, max_frame, deadline)
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
def call(
    path: Path, message: Message, context: Context, timeout: float = CALL_TIMEOUT_S
) -> tuple[Message, Context]:
    """Send one message to the worker at `path`; its reply and the updated context.

    Raises `OSError` (no worker, a dead one, a connection lost mid-frame, no reply within
    `timeout` seconds of the connect) or `LinkError` (the worker refused the request, or it
    runs as another user).
    """
    check_private(path.parent)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(min(CONNECT_TIMEOUT_S, timeout))
        sock.connect(str(path))
        check_peer(sock)
        send_pair(sock, message, context)
        return recv_pair(sock, deadline=deadline)
