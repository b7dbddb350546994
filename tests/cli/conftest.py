import pytest
from click.testing import CliRunner

from headwise.cli import main

#: small but complete: 16 texts (8 score heads, 8 held apart), 2 random seeds
REPORT_ARGS = ["--limit", "16", "--seeds", "2", "--fraction", "0.25"]


@pytest.fixture(scope="session")
def report_dir(tmp_path_factory):
    """One ``headwise report`` run on the embedded model, shared by the report tests."""
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["report", "--out", str(out), *REPORT_ARGS])
    assert result.exit_code == 0, result.output
    (out / "stdout.txt").write_text(result.stdout)
    return out
