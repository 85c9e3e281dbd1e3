"""The generated reference pages match the code, and the code gives them something to say."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedadapt.cli.app import build_parser
from fedadapt.cli.reference import PAGES, cli_page, config_page, write_pages

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_pages_are_the_generated_ones(tmp_path: Path) -> None:
    """Fails when a command, an option or a config key changed without `make docs`."""
    write_pages(tmp_path)
    for name in PAGES:
        committed = (ROOT / "docs" / "reference" / name).read_text(encoding="utf-8")
        assert committed == (tmp_path / name).read_text(encoding="utf-8"), (
            f"docs/reference/{name} is stale: run `make docs`"
        )


def _options_without_help(path: list[str], parser: argparse.ArgumentParser) -> list[str]:
    missing = [] if parser.description else [f"{' '.join(path)} (no description)"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help([*path, name], sub)
        elif not action.help:
            missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_a_description() -> None:
    assert _options_without_help(["fedadapt"], build_parser()) == []


def test_the_cli_page_names_every_command_and_nested_action() -> None:
    page = cli_page()
    for heading in (
        "## `fedadapt simulate`",
        "### `fedadapt device run`",
        "### `fedadapt rollout halt`",
    ):
        assert heading in page
    assert "| `--rounds ROUNDS` | federated rounds" in page


def test_the_config_page_shows_each_keys_rule_default_and_help() -> None:
    page = config_page()
    assert "| `rounds` | integer | >= 1 | `10` | yes | federated rounds |" in page
    assert "| `strategy` | string | one of `auto`, `fedavg`," in page
    assert (
        "| clients_per_round <= num_clients | config: clients_per_round = <clients_per_round>"
        in page
    )
