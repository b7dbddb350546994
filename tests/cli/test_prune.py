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
    info = json.loads(result.stdout)
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
    bad = runner.invoke(main, ["prune", "--heads", "0-1", "--out", str(tmp_path / "b"), "--limit", "8"])
    assert bad.exit_code == 2 and "cannot read '0-1'; write LAYER:HEAD,HEAD;LAYER:HEAD" in bad.output
    out_of_range = runner.invoke(main, ["prune", "--heads", "0:12", "--out", str(tmp_path / "c"), "--limit", "8"])
    assert out_of_range.exit_code == 2 and "Traceback" not in out_of_range.output
    assert not (tmp_path / "c").exists()


def test_parse_heads():
    assert parse_heads("0:1,2; 5:0") == {0: [1, 2], 5: [0]}
    with pytest.raises(ValueError, match="names no heads"):
        parse_heads(";")
    with pytest.raises(ValueError, match=r"names -1:0: layers and heads count from 0 \(no negative indices\)"):
        parse_heads("-1:0")


def test_prune_refuses_bad_requests_before_any_work(tmp_path):
    """Each is one line, exit 2, and writes nothing."""
    import headwise.models

    runner = CliRunner()
    texts = tmp_path / "three.txt"
    texts.write_text("One text here.\nA second text.\nAnd a third one.\n", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    folder = headwise.models.load().source
    unwritable = "/sys/headwise-test"  # refused even to root
    cases = [
        (["--fraction", "nan"], "'nan' is not a number; give a share of the heads between 0 and 1"),
        (["--fraction", "0.95"], "--fraction 0.95 would remove 68 of 72 heads, but every layer keeps at least one: "
                                 "at most 66 can go; use --fraction 0.916 or less."),
        (["--fraction", "0.3", "--texts", str(texts)], "prune needs at least 8 texts (half score the heads, half held "
                                                        "apart measure the quality), got 3 texts from"),
        (["--fraction", "0.3", "--texts", str(latin1)], f"--texts {latin1}: not UTF-8 text (byte 3 is 0xe9); save it as UTF-8."),
        (["--heads", "-1:0"], "layers and heads count from 0"),
        (["--fraction", "0.3", "--out", ""], "is empty; name the folder to write"),
        (["--fraction", "0.3", "--out", unwritable], "--out /sys/headwise-test: cannot write into /sys"),
        (["--fraction", "0.3", "--transformers-out", unwritable], "--transformers-out /sys/headwise-test: cannot write"),
        (["--fraction", "0.3", "--out", str(texts / "x")], f"--out {texts / 'x'}: {texts} is a file; choose a folder"),
    ]
    for extra, message in cases:
        args = ["prune", "--out", str(tmp_path / "out"), "--limit", "8", *extra]
        if "--out" in extra:
            args = ["prune", "--limit", "8", *extra]
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
        assert "Traceback" not in result.output
        assert not (tmp_path / "out").exists()
    same = runner.invoke(main, ["prune", str(folder), "--heads", "0:1", "--out", str(folder), "--limit", "8"])
    assert same.exit_code == 2 and "is the model being read; write the result to another folder" in same.output


def test_prune_counts_the_texts_it_cuts(tmp_path):
    from headwise.texts import doc_sentences

    texts = tmp_path / "texts.txt"
    lines = doc_sentences(6) + [" ".join(["word"] * 600)] * 2
    texts.write_text("\n".join(lines), encoding="utf-8")
    result = CliRunner().invoke(main, ["prune", "--heads", "0:1", "--out", str(tmp_path / "p"), "--texts", str(texts)])
    assert result.exit_code == 0, result.output
    assert f"texts: 8 texts from {texts}; 2 of them cut to 256 tokens (the model's limit)" in result.output


def test_prune_a_decoder_by_kv_groups(tmp_path):
    """A small random Llama saved by headwise: whole kv groups go, the cache per token shrinks, the folder loads."""
    import headwise.models as hm
    from tests.parallel._checks import _tiny_causal_lm

    folder = _tiny_causal_lm(2).save(tmp_path / "tiny")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["The cat sat.", "A dog ran.", "Heads look.", "Sinks hold.",
                                "Cats nap.", "Dogs bark.", "Birds fly.", "Fish swim."]), encoding="utf-8")
    args = ["prune", "--model", str(folder), "--fraction", "0.25", "--granularity", "groups",
            "--texts", str(texts), "--out", str(tmp_path / "pruned"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert len(info["removed"]) == 1 and sorted(info["kv_heads_after"]) == [1, 2]
    assert sum(info["heads_after"]) == 6 and info["kv_cache_bytes_per_token"] == {"before": 512, "after": 384}  # float64
    pruned = hm.load(tmp_path / "pruned")
    assert list(pruned.num_heads) == info["heads_after"]
    expected = pruned.perplexity(["Cats nap.", "Dogs bark.", "Birds fly.", "Fish swim."]).value
    assert abs(info["quality"]["perplexity_after"] - expected) <= 1e-9 * expected
    wrong = CliRunner().invoke(main, ["prune", "--model", str(folder), "--heads", "0:1", "--granularity", "groups",
                                      "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "--granularity applies to --fraction" in wrong.output
