from pathlib import Path

from gemmakit.cli.docs import render


def test_cli_reference_is_current():
    checked_in = (Path(__file__).parents[3] / "docs" / "cli.md").read_text()
    assert render() == checked_in, "run: python -m gemmakit.cli.docs > docs/cli.md"
