"""Start real gloo processes on 127.0.0.1, bounded in time; each rank writes its findings to a JSON file."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, check: Callable[[int, int], dict], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # several ranks share the cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = {"ok": True, **check(rank, world_size)}
    except BaseException:  # reported to the test, which fails with the traceback
        result = {"ok": False, "error": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


def launch(check: Callable[[int, int], dict], world_size: int, out: Path, *, timeout: float) -> list[dict]:
    """Run ``check(rank, world_size)`` in ``world_size`` fresh processes; kill them all after ``timeout`` s."""
    context = mp.start_processes(
        _entry, args=(world_size, free_port(), check, str(out)), nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{world_size} ranks ran past {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    results = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]
    for rank, result in enumerate(results):
        if not result["ok"]:
            raise AssertionError(f"rank {rank} failed:\n{result['error']}")
    return results
