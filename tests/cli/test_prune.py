"""``headwise prune``: named heads and by importance; the saved folder loads in headwise and transformers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import headwise.models
from headwise.cli import main
from headwise.cli.prune_cmd import parse_heads
from tests.helpers import assert_close_to_oracle


def test_prune_named_heads_saves_a_loadable_model(tmp_path):
    out, hf_out = tmp_path / "pruned", tmp_path / "pruned-hf"
    args = ["prune", "--heads", "0:1,2;5:0", "--out", str(out), "--transformers-out", str(hf_out), "--limit", "8", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["heads_after"] == [10, 12, 12, 12, 12, 11] and info["removed"] == [[0, 1], [0, 2], [5, 0]]
    assert 0.9 < info["quality"]["cosine"] <= 1.0 + 1e-6 and info["encode_seconds"]["speedup"] > 0
    reloaded = headwise.models.load(out)
    assert reloaded.num_heads == (10, 12, 12, 12, 12, 11)
    from transformers import BertModel

    hf = BertModel.from_pretrained(hf_out).eval()
    hf64 = BertModel.from_pretrained(hf_out, dtype=torch.float64).eval()  # the oracle
    batch = reloaded.tokenize(["A sentence to compare.", "Another, a little longer, sentence."])
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        oracle = hf64(**batch).last_hidden_state
        got, _ = reloaded(**batch)
    real = batch["attention_mask"].bool()
    assert_close_to_oracle(got[real], oracle[real], expected[real])


def test_prune_by_fraction(tmp_path):
    result = CliRunner().invoke(main, ["prune", "--fraction", "0.05", "--out", str(tmp_path / "p"), "--limit", "8"])
    assert result.exit_code == 0, result.output
    assert "removed 4 of 72 heads" in result.output and "cosine" in result.output


def test_prune_user_errors(tmp_path):
    runner = CliRunner()
    both = runner.invoke(main, ["prune", "--fraction", "0.1", "--heads", "0:1", "--out", str(tmp_path / "a")])
    assert both.exit_code == 2 and "give exactly one of --fraction F or --heads SPEC" in both.output
    bad = runner.invoke(main, ["prune", "--heads", "0-1", "--out", str(tmp_path / "b"), "--limit", "4"])
    assert bad.exit_code == 2 and "cannot read '0-1'; write LAYER:HEAD,HEAD;LAYER:HEAD" in bad.output
    out_of_range = runner.invoke(main, ["prune", "--heads", "0:12", "--out", str(tmp_path / "c"), "--limit", "4"])
    assert out_of_range.exit_code == 2 and "Traceback" not in out_of_range.output
    assert not (tmp_path / "c").exists()


def test_parse_heads():
    assert parse_heads("0:1,2; 5:0") == {0: [1, 2], 5: [0]}
    with pytest.raises(ValueError, match="names no heads"):
        parse_heads(";")
