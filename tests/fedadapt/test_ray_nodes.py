"""Which Ray node ran a ClientApp: address checks, the worker record, the server's reading."""

from __future__ import annotations

import socket

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedadapt.errors import FedAdaptError
from fedadapt.ray_nodes import (
    NODE_KEY,
    RSS_KEY,
    WORKER_RECORD,
    check_address,
    worker_record,
    workers_of,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


@pytest.mark.parametrize("address", ["10.0.0.5", "host:port", ":6379", "h:70000"])
def test_malformed_address_is_refused_by_name(address):
    with pytest.raises(FedAdaptError, match=f"ray_address {address!r} is not HOST:PORT"):
        check_address(address)


def test_address_where_nothing_listens_is_refused():
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(FedAdaptError, match=f"ray_address {address!r}: no Ray cluster answers"):
        check_address(address)


def test_listening_address_passes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_address(f"127.0.0.1:{s.getsockname()[1]}")


def test_outside_ray_a_reply_names_no_worker():
    assert worker_record() == {}


def _reply(worker: dict | None, error: bool = False) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 3})})
    if worker is not None:
        content[WORKER_RECORD] = ConfigRecord(worker)
    return Message(content, dst_node_id=1, message_type="train")


def test_server_lists_distinct_nodes_and_the_largest_actor_rss():
    replies = [
        _reply({NODE_KEY: "bb", RSS_KEY: 310.5}),
        _reply({NODE_KEY: "aa", RSS_KEY: 402.0}),
        _reply({NODE_KEY: "bb", RSS_KEY: 300.0}),
        _reply(None),  # a deployed SuperNode, or an old client
        _reply({NODE_KEY: 7, RSS_KEY: "big"}),  # malformed: skipped, never trusted
    ]
    assert workers_of(replies) == {"ray_nodes": ["aa", "bb"], "actor_peak_rss_mb": 402.0}


def test_no_worker_records_add_nothing_to_the_round():
    assert workers_of([_reply(None)]) == {}


def test_simulate_with_a_dead_ray_address_is_one_line_and_touches_no_folder(tmp_path, capsys):
    from fedadapt.cli.app import main

    address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "run"
    argv = ["simulate", "--config", "simulations/ci.toml", "--out", str(out)]
    assert main([*argv, "--ray-address", address]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"ray_address {address!r}: no Ray cluster answers" in err
    assert not out.exists()
