from fedadapt.bench import record

XEON = {"cpu": "Xeon", "date": "2026-12-01"}
EPYC = {"cpu": "EPYC", "date": "2026-12-02"}


def test_each_section_keeps_the_machine_it_was_measured_on():
    # sections merged from separate runs: a later run must not relabel the earlier figures
    result: dict = {}
    record(result, "aggregate", {"10": {"fedadapt_ms": 1.0}}, XEON)
    record(result, "scale", {"100": {"round_s": 30.0}}, EPYC)
    assert result["machines"] == {"aggregate": XEON, "scale": EPYC}
    assert result["machine"] == EPYC
    assert result["aggregate"] == {"10": {"fedadapt_ms": 1.0}}


def test_a_remeasured_section_takes_the_new_machine():
    result: dict = {}
    record(result, "scale", {"100": {"round_s": 70.0}}, XEON)
    record(result, "scale", {"100": {"round_s": 30.0}}, EPYC)
    assert result["machines"]["scale"] == EPYC
    assert result["scale"]["100"]["round_s"] == 30.0
