"""A device's own data folder: the format, its bad rows, the stable split, re-reading."""

import json
import os
from pathlib import Path

import pytest

from fedadapt.data import local_files
from fedadapt.data.local_files import BadRow, TooFewExamples, is_held_out, load, read_folder
from fedadapt.errors import DeviceError, FedAdaptError

LABELS = ["rotten", "fresh"]


def _jsonl(path: Path, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _pairs(local) -> set[tuple[str, int]]:
    d = local.data
    return set(zip(d.train_texts + d.test_texts, d.train_labels + d.test_labels, strict=True))


def _texts(local) -> tuple[set[str], set[str]]:
    return set(local.data.train_texts), set(local.data.test_texts)


def test_jsonl_and_csv_rows_with_label_names_and_ids(tmp_path):
    _jsonl(
        tmp_path / "a.jsonl",
        [{"text": "a dull film", "label": "rotten"}, {"text": "a joy", "label": 1}],
    )
    (tmp_path / "b.csv").write_text(
        'text,label\n"long, with a comma",fresh\nflat and tired,0\n', encoding="utf-8"
    )
    (tmp_path / "notes.txt").write_text("not data")  # other files are not read
    local = read_folder(tmp_path, LABELS, 0.3, key="0")
    d = local.data
    assert _pairs(local) == {
        ("a dull film", 0),
        ("a joy", 1),
        ("long, with a comma", 1),
        ("flat and tired", 0),
    }
    assert local.bad_rows == [] and local.duplicates == 0
    assert d.label_names == LABELS


def test_bad_rows_are_skipped_and_named_by_file_and_line(tmp_path):
    _jsonl(
        tmp_path / "a.jsonl",
        [
            {"text": "good one", "label": "fresh"},
            "{not json",
            '["a", "list"]',
            {"label": "fresh"},
            {"text": "   ", "label": "fresh"},
            {"text": "meh", "label": "sour"},
            {"text": "meh", "label": 2},
            {"text": 5, "label": 0},
            {"text": "no label here"},
            {"text": "bool label", "label": True},
        ],
    )
    (tmp_path / "b.csv").write_text(
        "text,label\nfine,1\ntoo,many,fields\n,0\nok,7\n", encoding="utf-8"
    )
    local = read_folder(tmp_path, LABELS, 0.3, key="0")
    reasons = [(b.file, b.line, b.reason.split(" (")[0]) for b in local.bad_rows]
    assert reasons == [
        ("a.jsonl", 2, "not JSON"),
        ("a.jsonl", 3, "not a JSON object"),
        ("a.jsonl", 4, "no text"),
        ("a.jsonl", 5, "empty text"),
        ("a.jsonl", 6, "unknown label 'sour'"),
        ("a.jsonl", 7, "unknown label 2"),
        ("a.jsonl", 8, "text is not a string"),
        ("a.jsonl", 9, "no label"),
        ("a.jsonl", 10, "unknown label True"),
        ("b.csv", 3, "bad CSV row"),
        ("b.csv", 4, "empty text"),
        ("b.csv", 5, "unknown label '7'"),
    ]
    assert str(local.bad_rows[0]) == "a.jsonl:2: not JSON"
    assert sorted(local.data.train_texts + local.data.test_texts) == ["fine", "good one"]


def test_copies_count_once_and_a_copy_with_another_label_is_a_bad_row(tmp_path):
    _jsonl(
        tmp_path / "a.jsonl",
        [
            {"text": "Same  words", "label": "fresh"},
            {"text": " Same words ", "label": 1},
            {"text": "Same words", "label": "rotten"},
        ],
    )
    local = read_folder(tmp_path, LABELS, 0.3, key="0")
    assert local.examples == 1 and local.duplicates == 1
    assert local.bad_rows == [BadRow("a.jsonl", 3, "same text as a.jsonl:1, another label")]


def test_appending_data_never_moves_an_old_example_across_the_split(tmp_path):
    f = tmp_path / "a.jsonl"
    _jsonl(f, [{"text": f"review number {i}", "label": i % 2} for i in range(200)])
    train, test = _texts(read_folder(tmp_path, LABELS, 0.3, key="7"))
    assert 40 <= len(test) <= 80  # about 30% of 200
    _append(f, [{"text": f"a later review {i}", "label": i % 2} for i in range(200)])
    (tmp_path / "0-first.jsonl").write_text(json.dumps({"text": "new file", "label": 0}) + "\n")
    train2, test2 = _texts(read_folder(tmp_path, LABELS, 0.3, key="7"))
    assert train <= train2 and test <= test2
    assert all(is_held_out(t, 0.3, "7") == (t in test2) for t in train2 | test2)


def test_the_split_is_keyed(tmp_path):
    texts = [f"review number {i}" for i in range(200)]
    a = {t for t in texts if is_held_out(t, 0.3, "0")}
    b = {t for t in texts if is_held_out(t, 0.3, "1")}
    assert a != b


@pytest.mark.parametrize(
    ("make", "message", "wire"),
    [
        (lambda p: p.mkdir(), "is not a regular file", "data-not-a-file files=1"),
        (
            lambda p: p.write_bytes(b'{"text": "caf\xe9", "label": 0}\n'),
            "is not UTF-8 text",
            "data-not-utf8 files=1",
        ),
        (lambda p: p.symlink_to(p.parent / "gone"), "is a link", "data-unreadable files=1"),
        (lambda p: os.mkfifo(p), "is not a regular file", "data-not-a-file files=1"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, make, message, wire):
    """The owner's message names the file; the wire form is a code and counts only."""
    path = tmp_path / "bad.jsonl"
    make(path)
    with pytest.raises(DeviceError, match=message) as e:
        read_folder(tmp_path, LABELS, 0.3, key="0")  # a FIFO: refused at once, never read
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert e.value.wire() == wire


def test_a_link_to_rows_outside_the_folder_is_refused_not_followed(tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    _jsonl(outside, [{"text": "someone else's row", "label": 0}])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.jsonl").symlink_to(outside)
    with pytest.raises(DeviceError, match="is a link"):
        read_folder(tmp_path / "data", LABELS, 0.3, key="0")


def test_a_link_to_a_device_file_is_refused_without_reading(tmp_path):
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    with pytest.raises(DeviceError, match="is a link"):
        read_folder(tmp_path, LABELS, 0.3, key="0")


def test_a_file_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(local_files, "MAX_FILE_BYTES", 100)
    _jsonl(tmp_path / "big.jsonl", [{"text": f"row {i}", "label": 0} for i in range(10)])
    with pytest.raises(DeviceError, match="larger than") as e:
        read_folder(tmp_path, LABELS, 0.3, key="0")
    assert e.value.wire() == "data-too-large files=1"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_a_json_line_holding_a_unicode_line_separator_stays_one_row(tmp_path, separator):
    text = f"first half{separator}second half"
    line = '{"text": "' + text + '", "label": 0}\n'  # unescaped, as JSON allows
    (tmp_path / "a.jsonl").write_text(line + '{"text": "other", "label": 1}\n', encoding="utf-8")
    local = read_folder(tmp_path, LABELS, 0.3, key="0")
    assert not local.bad_rows
    assert sorted(local.data.train_texts + local.data.test_texts) == sorted([text, "other"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    _jsonl(path, [{"text": "x", "label": 0}])
    path.chmod(0)
    with pytest.raises(FedAdaptError, match=r"cannot read data file .*Permission denied"):
        read_folder(tmp_path, LABELS, 0.3, key="0")


def test_a_csv_without_text_and_label_columns_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("review,stars\ngood,5\n")
    with pytest.raises(DeviceError, match="must be the header text,label") as e:
        read_folder(tmp_path, LABELS, 0.3, key="0")
    assert e.value.wire() == "data-bad-header files=1"


def test_a_csv_without_a_header_never_quotes_its_first_row(tmp_path):
    """The first row of a header-less file is the user's own text: not in the message."""
    (tmp_path / "a.csv").write_text("my private sentence CANARY,1\nanother,0\n")
    with pytest.raises(DeviceError) as e:
        read_folder(tmp_path, LABELS, 0.3, key="0")
    assert "CANARY" not in str(e.value) and "CANARY" not in e.value.wire()


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(FedAdaptError, match=r"data folder .*missing does not exist"):
        load(tmp_path / "missing", LABELS, 0.3, "0", min_examples=4)


def test_too_few_examples_is_an_error_that_counts_what_was_found(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "one", "label": 0}, "{bad", {"text": "two", "label": 1}])
    with pytest.raises(
        TooFewExamples, match=r"2 usable examples .* 1 bad rows .* at least 10"
    ) as e:
        load(tmp_path, LABELS, 0.3, "0", min_examples=10)
    assert e.value.wire().startswith("too-few-examples usable=2 ")
    assert e.value.wire().endswith(" bad_rows=1 needs=10")


def test_load_rereads_only_when_a_file_changed(tmp_path, caplog):
    f = tmp_path / "a.jsonl"
    _jsonl(f, [{"text": f"review {i}", "label": i % 2} for i in range(30)] + ["{bad"])
    with caplog.at_level("WARNING", logger="fedadapt.data"):
        first = load(tmp_path, LABELS, 0.3, "0", min_examples=4)
        assert load(tmp_path, LABELS, 0.3, "0", min_examples=4) is first  # not re-read
    assert [r.getMessage() for r in caplog.records] == [f"skipped {tmp_path}/a.jsonl:31: not JSON"]
    _append(f, [{"text": "a new row", "label": 1}])
    again = load(tmp_path, LABELS, 0.3, "0", min_examples=4)
    assert again.examples == first.examples + 1


def test_bad_rows_are_logged_up_to_a_cap(tmp_path, caplog):
    _jsonl(
        tmp_path / "a.jsonl",
        [{"text": f"ok {i}", "label": 0} for i in range(10)] + ["{bad"] * 25,
    )
    with caplog.at_level("WARNING", logger="fedadapt.data"):
        local = load(tmp_path, LABELS, 0.3, "0", min_examples=4)
    assert len(local.bad_rows) == 25
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == local_files.LOGGED_BAD_ROWS + 1
    assert lines[-1] == "... and 5 more bad rows"


def test_a_partition_written_as_jsonl_reads_back_whole(tmp_path):
    from fedadapt.data import ClientData

    d = ClientData("m", ["good", "bad, really"], [1, 0], ['said "meh"'], [0], LABELS)
    path = tmp_path / "data" / "reviews.jsonl"
    assert local_files.write_jsonl(path, d) == 3
    assert path.stat().st_mode & 0o777 == 0o600
    local = read_folder(tmp_path / "data", LABELS, 0.3, key="0")
    assert _pairs(local) == {("good", 1), ("bad, really", 0), ('said "meh"', 0)}
    assert '"label": "fresh"' in path.read_text().splitlines()[0]


# -- the split a device trains with, kept for its rollout agent -------------------------------


def test_the_recorded_split_is_read_back_and_defaults_before_training(tmp_path):
    assert local_files.recorded_split(tmp_path) == local_files.DEFAULT_SPLIT
    local_files.record_split(tmp_path, 0.25, "7")
    assert local_files.recorded_split(tmp_path) == (0.25, "7")
    local_files.record_split(tmp_path, 0.4, "1")  # a later run with another split
    assert local_files.recorded_split(tmp_path) == (0.4, "1")


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"test_fraction": 0.3}', '{"test_fraction": "0.3", "key": "0"}',
     '{"test_fraction": 1.5, "key": "0"}', '{"test_fraction": 0.3, "key": 0}',
     '{"test_fraction": true, "key": "0"}'],
)  # fmt: skip
def test_a_corrupt_split_record_is_one_line_naming_it(tmp_path, text):
    (tmp_path / local_files.SPLIT_FILE).write_text(text)
    with pytest.raises(FedAdaptError, match=str(tmp_path / local_files.SPLIT_FILE)):
        local_files.recorded_split(tmp_path)
