"""A device's own labelled examples, read from a folder of JSON Lines and CSV files.

Format (documented in docs/how-to/device.md, "Device data"): `*.jsonl` files with one
`{"text": ..., "label": ...}` object a line, and `*.csv` files with a `text,label` header.
A label is a name from the run's label set or its integer id (in CSV, the id's digits).

Why it is built this way:
- The train / held-out side of an example is decided by a keyed SHA-256 of its normalized
  text, never by its position or Python's salted `hash()`: appending rows, reordering files
  or restarting the device never moves an old example across the split, so the held-out
  accuracy keeps measuring examples the device never trained on. The key is a secret the
  device keeps in its folder (`split_key`), not the run's seed: a run with another seed would
  otherwise reshuffle the split, and a server that knows the seed would know the split.
- Copies of one text (after normalization) count once: a copy on both sides would leak.
- A bad row is skipped, counted and named by file and line, so one typo does not take a
  device out of the federation; a file that cannot be read at all is a one-line error.
- Only regular files directly inside the folder are read, each up to `MAX_FILE_BYTES`: a
  link could read rows from anywhere (or a device file without end), and a named pipe would
  hang the reader.
- Every error is a `DeviceError`: its message, for the device's owner, may name the file;
  what crosses to the server is only its code and counts (`DeviceError.wire`).
- `load` re-reads the folder only when a file's name, size or mtime changed, so it can be
  called at every round and new rows are used from the next round on.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import stat
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from fedadapt.atomic import PRIVATE, atomic_write_text, private_folder
from fedadapt.data import ClientData
from fedadapt.errors import DeviceError

log = logging.getLogger("fedadapt.data")

SUFFIXES = (".jsonl", ".csv")
MIN_EXAMPLES_FLOOR = 4  # below this a held-out accuracy means nothing, whatever the config
LOGGED_BAD_ROWS = 20  # bad rows named one a line in the log; the rest are only counted
MAX_FILE_BYTES = 64 << 20  # one data file; a device's labelled examples are far smaller


class TooFewExamples(DeviceError):
    """The folder holds too few usable examples for this device to take part."""


@dataclass(frozen=True)
class BadRow:
    """A skipped row: the file's name (not its path), the 1-based line and why.

    Logged on the device only; at most the count of bad rows reaches the server (in a
    `TooFewExamples` error).
    """

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LocalData:
    """The device's examples, split, with what was skipped and why."""

    data: ClientData
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: int = 0

    @property
    def examples(self) -> int:
        """Usable examples on both sides of the split (duplicates counted once)."""
        return len(self.data.train_texts) + len(self.data.test_texts)


def normalize(text: str) -> str:
    """The form two copies of one example share: NFC, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def is_held_out(text: str, test_fraction: float, key: str) -> bool:
    """The example's side of the split: a keyed hash of its normalized text, nothing else."""
    digest = hashlib.sha256(f"{key}\0{normalize(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < test_fraction * 2**64


# The split a device trains with, kept in its device folder: the run config (test_fraction,
# seed) reaches only the ClientApp, yet the rollout agent must score versions on the same
# held-out side, or it would score examples the device trained on.
SPLIT_FILE = "split.json"
SPLIT_KEY_FILE = "split-key"  # the device's own secret that keys its split (0600)
DEFAULT_SPLIT = (0.3, "0")  # SimConfig's defaults, for a device that has not trained yet


def record_split(device_dir: Path, test_fraction: float, key: str) -> None:
    """Keep the split this device trains with (written only when it changes)."""
    path = Path(device_dir) / SPLIT_FILE
    text = json.dumps({"test_fraction": test_fraction, "key": key}, sort_keys=True) + "\n"
    try:
        if path.exists() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, PRIVATE)
    except OSError as e:
        raise DeviceError(
            f"cannot record the data split in {path}: {e.strerror}", "split-unwritable"
        ) from None


def split_key(device_dir: Path) -> str:
    """The device's split key: 32 random bytes made once, kept in its folder (0600), the
    same for every run, seed and restart."""
    path = Path(device_dir) / SPLIT_KEY_FILE
    try:
        if not path.exists():
            private_folder(path.parent)
            # whole or absent: written aside, then linked in (a concurrent message that
            # made it first wins, and nobody reads a half-written key)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".split-key.")
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    f.write(secrets.token_hex(32))
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceError(f"cannot keep the split key {path}: {e}", "split-key") from None
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise DeviceError(f"{path} is not a split key (64 hex digits)", "split-key")
    return key


def recorded_split(device_dir: Path) -> tuple[float, str]:
    """The split the device trains with; `DEFAULT_SPLIT` if it never trained (then no
    example was trained on, so any split is held out)."""
    path = Path(device_dir) / SPLIT_FILE
    if not path.exists():
        return DEFAULT_SPLIT
    try:
        raw = json.loads(path.read_text())
        fraction, key = raw["test_fraction"], raw["key"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DeviceError(f"{path} is not a data split record ({e})", "split-unreadable") from None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DeviceError(f"{path}: test_fraction must be a number", "split-unreadable")
    if not 0.0 < fraction < 1.0 or not isinstance(key, str):
        raise DeviceError(
            f"{path}: test_fraction must be in (0, 1) and key a string", "split-unreadable"
        )
    return float(fraction), key


def parse_label(value: object, labels: list[str], from_csv: bool) -> int | None:
    """A label name or its integer id; in CSV every cell is text, so digits are an id."""
    if isinstance(value, str):
        if value.strip() in labels:
            return labels.index(value.strip())
        if from_csv and value.strip().isdigit():
            value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    return None


def _read_text(path: Path) -> str:
    """The whole file as text, or a one-line error naming the file and what is wrong.

    Opened without following a link and without blocking, then checked to be a regular
    file before a byte is read: a pipe or a device file never gets read from.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        what = "is a link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror or e})"
        raise DeviceError(f"data file {path} {what}", "data-unreadable", files=1) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DeviceError(
                f"data file {path} is not a regular file (a folder, a pipe or a device)",
                "data-not-a-file",
                files=1,
            )
        data = _read_up_to(fd, MAX_FILE_BYTES + 1)
    except OSError as e:
        raise DeviceError(
            f"cannot read data file {path}: {e.strerror or e}", "data-unreadable", files=1
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise DeviceError(
            f"data file {path} is larger than {MAX_FILE_BYTES >> 20} MiB; split it",
            "data-too-large",
            files=1,
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DeviceError(
            f"data file {path} is not UTF-8 text (byte {e.start})", "data-not-utf8", files=1
        ) from None


def _read_up_to(fd: int, limit: int) -> bytes:
    """At most `limit` bytes of an open file (a file may grow while it is read)."""
    chunks, size = [], 0
    while size < limit and (chunk := os.read(fd, min(1 << 20, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


Row = tuple[int, object, object]  # (line, text, label) as found, before any check


def _jsonl_rows(name: str, text: str, bad: list[BadRow]) -> list[Row]:
    rows: list[Row] = []
    # split on \n only: `splitlines` also splits at U+2028, U+2029 and U+0085, which a JSON
    # string may hold unescaped, and would cut a valid line in two
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            bad.append(BadRow(name, line, "not JSON"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRow(name, line, "not a JSON object"))
            continue
        if "text" not in obj:
            bad.append(BadRow(name, line, "no text"))
            continue
        rows.append((line, obj["text"], obj.get("label")))
    return rows


def _csv_rows(path: Path, text: str, bad: list[BadRow]) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return []
    except csv.Error:
        raise DeviceError(f"data file {path}: bad CSV header", "data-bad-header", files=1) from None
    if "text" not in header or "label" not in header:
        # the first row is not quoted: without a header it is the user's own text
        raise DeviceError(
            f"data file {path}: the first row must be the header text,label "
            f"(it has {len(header)} columns, not named text and label)",
            "data-bad-header",
            files=1,
        )
    t, y = header.index("text"), header.index("label")
    rows: list[Row] = []
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may span lines)
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            bad.append(BadRow(path.name, line, f"bad CSV row ({e})"))
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            reason = f"bad CSV row ({len(cells)} fields, the header has {len(header)})"
            bad.append(BadRow(path.name, line, reason))
            continue
        rows.append((line, cells[t], cells[y]))


def _examples(path: Path, labels: list[str], bad: list[BadRow]) -> list[tuple[int, str, int]]:
    """`(line, text, label id)` of a file's usable rows; the others go to `bad`."""
    text = _read_text(path)
    from_csv = path.suffix.lower() == ".csv"
    rows = _csv_rows(path, text, bad) if from_csv else _jsonl_rows(path.name, text, bad)
    out = []
    for line, value, label in rows:
        if not isinstance(value, str):
            bad.append(BadRow(path.name, line, "text is not a string"))
        elif not value.strip():
            bad.append(BadRow(path.name, line, "empty text"))
        elif label is None or label == "":
            bad.append(BadRow(path.name, line, "no label"))
        elif (y := parse_label(label, labels, from_csv)) is None:
            known = ", ".join(labels)
            reason = f"unknown label {label!r} (one of {known}, or 0-{len(labels) - 1})"
            bad.append(BadRow(path.name, line, reason))
        else:
            out.append((line, value, y))
    return out


def data_files(folder: Path) -> list[Path]:
    """The folder's `.jsonl` and `.csv` entries, by name; a missing folder is an error."""
    if not folder.is_dir():
        raise DeviceError(
            f"the device data folder {folder} does not exist or is not a folder", "data-missing"
        )
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise DeviceError(
            f"cannot list the device data folder {folder}: {e.strerror}", "data-unreadable"
        ) from None
    return [p for p in entries if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")]


def read_folder(folder: Path, labels: list[str], test_fraction: float, key: str) -> LocalData:
    """Every usable example of the folder, deduplicated and split by its keyed hash."""
    bad: list[BadRow] = []
    seen: dict[str, tuple[str, int, int]] = {}  # normalized text -> (file, line, label)
    train: tuple[list[str], list[int]] = ([], [])
    test: tuple[list[str], list[int]] = ([], [])
    duplicates = 0
    for path in data_files(folder):
        for line, text, y in _examples(path, labels, bad):
            norm = normalize(text)
            if norm in seen:
                first_file, first_line, first_y = seen[norm]
                if first_y != y:
                    where = f"{first_file}:{first_line}"
                    bad.append(BadRow(path.name, line, f"same text as {where}, another label"))
                else:
                    duplicates += 1
                continue
            seen[norm] = (path.name, line, y)
            side = test if is_held_out(norm, test_fraction, key) else train
            side[0].append(text)
            side[1].append(y)
    data = ClientData(folder.name, *train, *test, list(labels))
    bad.sort(key=lambda b: (b.file, b.line))  # files are read in name order
    return LocalData(data, bad, duplicates)


_CACHE: dict[tuple, LocalData] = {}
_LAST: dict[str, object] = {}  # the last folder read's counts, for the device's own status


def last_read() -> dict[str, object] | None:
    """The counts of the last folder `load` read (usable, train, held out, bad rows by
    file), for the device's own status; None before any read."""
    return dict(_LAST) or None


def _signature(folder: Path) -> tuple:
    out = []
    for p in data_files(folder):
        try:
            st = p.lstat()  # a link is refused when read, not followed here
        except OSError as e:
            raise DeviceError(
                f"cannot read data file {p}: {e.strerror}", "data-unreadable", files=1
            ) from None
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def load(
    folder: Path, labels: list[str], test_fraction: float, key: str, min_examples: int
) -> LocalData:
    """The folder's data, re-read only when a file changed; too few examples is an error.

    Bad rows are logged (one line each, the first `LOGGED_BAD_ROWS`) when the folder is
    read, not at every round.
    """
    folder = Path(folder)
    _LAST.clear()  # a folder that cannot be read leaves no stale counts
    sig = (str(folder.resolve()), tuple(labels), test_fraction, key, _signature(folder))
    local = _CACHE.get(sig)
    if local is None:
        local = read_folder(folder, labels, test_fraction, key)
        _log(folder, local)
        _CACHE.clear()  # one device, one folder: keep only the newest reading
        _CACHE[sig] = local
    need = max(min_examples, MIN_EXAMPLES_FLOOR)
    d = local.data
    bad_by_file: dict[str, int] = {}
    for row in local.bad_rows:
        bad_by_file[row.file] = bad_by_file.get(row.file, 0) + 1
    _LAST.clear()
    _LAST.update(
        usable=local.examples,
        train=len(d.train_texts),
        held_out=len(d.test_texts),
        bad_rows=len(local.bad_rows),
        duplicates=local.duplicates,
        bad_by_file=bad_by_file,
        needs=need,
    )
    if local.examples < need or not d.train_texts or not d.test_texts:
        raise TooFewExamples(
            f"device data folder {folder}: {local.examples} usable examples "
            f"({len(d.train_texts)} train, {len(d.test_texts)} held out, "
            f"{len(local.bad_rows)} bad rows skipped); needs at least {need} "
            "with at least one on each side",
            "too-few-examples",
            usable=local.examples,
            train=len(d.train_texts),
            held_out=len(d.test_texts),
            bad_rows=len(local.bad_rows),
            needs=need,
        )
    return local


def write_jsonl(path: Path, data: ClientData) -> int:
    """All of `data`'s rows (train and test) as a device's JSONL file, labels by name.

    The deployment demo's stand-in for users' own data: each SuperNode gets its demo
    partition this way and splits it again by the keyed hash, as a real device would.
    """
    rows = zip(
        data.train_texts + data.test_texts, data.train_labels + data.test_labels, strict=True
    )
    lines = [json.dumps({"text": t, "label": data.label_names[y]}) + "\n" for t, y in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(lines), PRIVATE)  # a user's data: theirs alone
    return len(lines)


def _log(folder: Path, local: LocalData) -> None:
    for row in local.bad_rows[:LOGGED_BAD_ROWS]:
        log.warning("skipped %s/%s", folder, row)
    if len(local.bad_rows) > LOGGED_BAD_ROWS:
        log.warning("... and %d more bad rows", len(local.bad_rows) - LOGGED_BAD_ROWS)
    log.info(
        "device data %s: %d train, %d held out, %d duplicates, %d bad rows",
        folder,
        len(local.data.train_texts),
        len(local.data.test_texts),
        local.duplicates,
        len(local.bad_rows),
    )
