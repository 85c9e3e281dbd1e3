"""The guardrail table: the guardrail as it is needs a quarter of the reporters or more to
move any decision; the rule it replaced fell to a handful."""

from __future__ import annotations

from tests.simulations.script_helpers import load_script, run_script


def test_under_a_quarter_of_the_reporters_cannot_move_a_decision():
    table = load_script("guardrail_table")
    for attack in table.ATTACKS:
        assert table.liars_needed(20, attack, table.new_rule_halts) >= 0.25, attack
    # the old rule: one device claiming 10^12 examples among twenty forced a halt
    forced = "force a halt (liars: all failed, 10^12 examples)"
    assert table.liars_needed(20, forced, table.old_rule_halts) == 0.05


def test_the_script_writes_its_table(tmp_path):
    done = run_script("guardrail_table", "--out", tmp_path, "--sizes", "10")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "table.md").read_text().count("\n| ") == 4  # one row per attack
