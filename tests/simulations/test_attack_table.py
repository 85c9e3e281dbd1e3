"""The attack table from synthetic reports: paired differences against the clean run over
the same clients, the replies refused, and a run not made yet named as such."""

from __future__ import annotations

import pytest

from tests.simulations.script_helpers import load_script, run_script, write_json


def _report(path, globals_: list[float], rejected: dict | None = None) -> None:
    per = {
        str(i): {"global_accuracy": g, "personalized_accuracy": g + 0.1}
        for i, g in enumerate(globals_)
    }
    final = {"global_accuracy": sum(globals_) / len(globals_)}
    final["personalized_accuracy"] = final["global_accuracy"] + 0.1
    rounds = [{"round": 1, "rejected": rejected or {}}, {"round": 2, "rejected": rejected or {}}]
    write_json(path / "report.json", {"final": final, "per_client": per, "rounds": rounds})


def test_the_table_pairs_each_attack_with_the_clean_run(tmp_path):
    table = load_script("attack_table")
    _report(tmp_path / "clean", [0.8, 0.7, 0.9, 0.6])
    _report(tmp_path / "scale-20", [0.7, 0.6, 0.8, 0.5], {"num-examples-cap": 2})
    text, data = table.table(tmp_path)
    assert data["scale-20"]["vs_clean"]["global_accuracy"]["mean_diff"] == pytest.approx(-0.1)
    assert data["scale-20"]["rejected"] == {"num-examples-cap": 4}
    row = next(line for line in text.splitlines() if line.startswith("| scale | 20% |"))
    assert "-0.100 [-0.100, -0.100] *" in row and "num-examples-cap 4" in row
    assert "| sign-flip | 10% | not run |" in text


def test_without_a_clean_run_it_is_one_line(tmp_path):
    done = run_script("attack_table", "--runs", tmp_path)
    assert done.returncode != 0 and "the clean run's report" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
