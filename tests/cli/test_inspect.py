"""``headwise inspect`` through click's CliRunner, on the real shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import headwise.models
from headwise.cli import main
from headwise.heads import prune_heads_


def test_inspect_default_model_json():
    result = CliRunner().invoke(main, ["inspect", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["layers"] == 6 and info["heads_per_layer"] == [12] * 6 and info["head_dim"] == 32
    assert info["parameters"] == sum(p.numel() for p in headwise.models.load().parameters())
    assert info["backend"] == "sdpa" and info["backend_with_weights"] == "weights"


def test_inspect_the_decoder_by_option():
    result = CliRunner().invoke(main, ["inspect", "--model", "SmolLM2-135M-Instruct", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["layers"] == 30 and info["heads_per_layer"] == [9] * 30 and info["kv_heads_per_layer"] == [3] * 30
    assert info["head_dim"] == 64 and info["hidden_size"] == 576


def test_inspect_table_and_a_pruned_folder(tmp_path):
    model = headwise.models.load()
    prune_heads_(model, {0: [0, 1, 2], 5: [11]})
    model.save(tmp_path / "pruned")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "pruned")])
    assert result.exit_code == 0, result.output
    assert "9, 12, 12, 12, 12, 11" in result.output and "68" in result.output


def test_user_error_is_one_line_and_nonzero():
    result = CliRunner().invoke(main, ["inspect", "/no/such/folder"])
    assert result.exit_code == 2
    assert "no model folder at '/no/such/folder'" in result.output
    assert "Traceback" not in result.output


def test_help_has_examples():
    result = CliRunner().invoke(main, ["inspect", "--help"])
    assert result.exit_code == 0 and "headwise inspect ./minilm-pruned --json" in result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("headwise")  # installed beside this interpreter
    assert exe.exists(), f"no console script at {exe}; install the package (pip install -e '.[cli]')"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "headwise inspect" in out.stdout
