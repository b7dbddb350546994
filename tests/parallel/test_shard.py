"""shard_heads_ in real processes (gloo over 127.0.0.1): sharded equals unsharded, outputs and gradients.

One launch of 2 ranks runs every tensor-parallel check, one launch of 4 ranks the 2 x 2
FSDP2 x TP and DDP x TP checks (``import torch`` alone costs seconds per process here).
Each launch is killed and the test fails when it runs past its time limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from headwise import Attention
from headwise.parallel import shard_heads_
from tests.parallel import _checks
from tests.parallel._launch import launch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.distributed

TOL = 1e-10  # float64: sharded sums differ from unsharded ones by rounding only


def test_tensor_parallel_two_ranks_equal_one_process(tmp_path):
    results = launch(_checks.tensor_parallel, 2, tmp_path, timeout=150)
    for r in results:
        assert r["attention_counts"] == {"attention": 1, "feed_forward": 0}
        assert r["bert_counts"] == {"attention": 2, "feed_forward": 2}
        assert r["local_heads"] == [2, 1, 2]  # H/T, K/T, gates of the local heads
        for key in ("attention_out", "attention_grads", "attention_input_grad", "decode", "bert_out", "bert_grads"):
            assert r[key] < TOL, f"{key}: {r[key]}"
        assert re.fullmatch(
            r"ValueError: 0 has num_heads=6 and num_kv_heads=3, but the tensor-parallel size is 2: .*"
            r"world sizes that work for this layer: 1, 3\.",
            r["odd_kv_error"],
        )
        assert r["odd_kv_unchanged"]
        assert r["decoder_counts"] == {"attention": 2, "feed_forward": 2}
        assert r["decoder_heads"] == [[2, 2], [1, 1]]  # each rank: one kv group and its 2 query heads
        assert r["decoder_same_text"]
        assert re.search(r"num_kv_heads=3, but the tensor-parallel size is 2.*work for this layer: 1, 3\.", r["decoder_odd_error"])
        assert r["decoder_odd_unchanged"]
        assert r["odd_heads_error"].startswith("ValueError: model has num_heads=3 and num_kv_heads=3")
        assert re.match(r"ValueError: 1 is a MultiheadAttention, whose packed in_proj_weight", r["mha_error"])
        assert re.match(r"ValueError: parameter 'q_proj.weight' is a DTensor.*already sharded", r["twice_error"])
        assert re.match(r"ValueError: mesh has 2 dimensions \(1, 2\); .*mesh\['tp'\]", r["mesh_error"])
        assert r["type_error"].startswith("TypeError: mesh must be a torch.distributed.device_mesh.DeviceMesh, got str")


def test_fsdp2_and_ddp_over_tensor_parallel_2x2(tmp_path):
    results = launch(_checks.data_and_tensor_parallel, 4, tmp_path, timeout=240)
    for r in results:
        for key in ("fsdp_out", "fsdp_grads", "fsdp_next_step", "ddp_out", "ddp_grads", "ddp_next_step"):
            assert r[key] < TOL, f"{key}: {r[key]}"


def test_model_without_attention_is_refused_before_any_process_group():
    # the mesh type is checked first; a model with nothing to shard needs no processes to be refused
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        shard_heads_(3, None)
    with pytest.raises(TypeError, match="mesh must be a torch.distributed.device_mesh.DeviceMesh, got NoneType"):
        shard_heads_(nn.Sequential(Attention(8, 2)), None)
    assert not torch.distributed.is_initialized()


def test_a_hung_rank_is_killed_at_the_deadline(tmp_path):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="2 ranks ran past 8 s"):
        launch(_checks.hang, 2, tmp_path, timeout=8)
    assert time.monotonic() - start < 30


def test_torchrun_example_matches_the_unsharded_model():
    """The README's torchrun command (one machine, 2 processes) on all-MiniLM-L6-v2."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(ROOT / "examples" / "shard_heads.py"), "--texts", "8"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and the ranks it started
            process.communicate()
            raise
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"heads per rank \(6, 6, 6, 6, 6, 6\); 8 texts; max \|sharded - unsharded\| over all ranks: (\S+)", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) < 1e-5
