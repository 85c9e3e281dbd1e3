"""The ServerApp's own behaviour outside a round: how its errors reach Flower's log."""

import logging


def test_a_bad_run_config_through_flower_is_one_line_without_a_traceback(caplog):
    """`flwr run . --run-config rounds=0` printed a 23-line traceback; Flower logs what the
    ServerApp raises with exc_info, and the app's filter turns a fedadapt error into one line
    naming the key (the run's status keeps the message)."""
    from flwr.common.logger import log

    import fedadapt.server.app  # noqa: F401 - installs the filter on Flower's logger
    from fedadapt.errors import ConfigError
    from fedadapt.simconfig import SimConfig

    try:
        SimConfig.from_run_config({"rounds": 0})
    except ConfigError as e:
        log(logging.ERROR, "%s raised an exception", "ServerApp", exc_info=e)
    (record,) = [r for r in caplog.records if r.name == "flwr"]
    assert record.getMessage() == "fedadapt: error: config: rounds = 0 is not an integer >= 1"
    assert record.exc_info is None  # no traceback is formatted
    caplog.clear()
    try:
        raise ValueError("a bug")
    except ValueError as e:
        log(logging.ERROR, "%s raised an exception", "ServerApp", exc_info=e)
    (record,) = [r for r in caplog.records if r.name == "flwr"]
    assert record.exc_info is not None  # a bug keeps its traceback


def test_flowers_lines_that_contradict_the_round_are_dropped(caplog):
    """The demo printed "Federated evaluation will be skipped" while accuracy came every
    round, and "Received 1 results" with 10 clients sampled (the folded reply)."""
    from flwr.common.logger import log

    import fedadapt.server.app  # noqa: F401 - installs the filter on Flower's logger
    from fedadapt.server.strategy import build_strategy
    from fedadapt.simconfig import SimConfig

    caplog.set_level(logging.INFO)
    build_strategy(SimConfig())  # Flower's FedAvg, its own evaluation off
    log(logging.INFO, "%s: Received %s results and %s failures", "aggregate_train", 1, 0)
    log(logging.INFO, "round %s of %s", 1, 2)  # any other line of Flower's stays
    assert [r.getMessage() for r in caplog.records if r.name == "flwr"] == ["round 1 of 2"]
