"""all-MiniLM-L6-v2 with its heads split over tensor-parallel ranks, launched by torchrun.

Every rank loads the model, keeps the unsharded sentence embeddings as the reference,
calls ``headwise.parallel.shard_heads_`` on the "tp" dimension of a ("dp", "tp") mesh
and encodes its data-parallel share of the texts; rank 0 prints the worst difference.
gloo on CPU, nccl where every rank has a GPU.

One machine, 2 processes (tensor parallel over both)::

    .venv/bin/torchrun --nproc-per-node 2 examples/shard_heads.py

Two machines, 2 processes each, 2-way tensor parallel x 2-way data parallel (run on each
machine, with its own --node-rank and the first machine's address)::

    .venv/bin/torchrun --nnodes 2 --nproc-per-node 2 --node-rank 0 \\
        --rdzv-backend c10d --rdzv-endpoint HOST0:29500 examples/shard_heads.py --tp 2
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import headwise.models
from headwise.parallel import shard_heads_
from headwise.texts import doc_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: all ranks)")
    parser.add_argument("--texts", type=int, default=32)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    tp = args.tp or world
    if world % tp:
        raise ValueError(f"--tp {tp} does not divide the {world} ranks.")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh("cuda" if cuda else "cpu", (world // tp, tp), mesh_dim_names=("dp", "tp"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

    texts = doc_sentences(args.texts)
    dp_rank, dp_size = mesh["dp"].get_local_rank(), mesh["dp"].size()
    mine = texts[dp_rank::dp_size]  # this data-parallel rank's share; every tp rank of it gets the same
    model = headwise.models.load(device=device).eval()
    reference = model.encode(mine)
    counts = shard_heads_(model, mesh["tp"])
    got = model.encode(mine)
    worst = torch.tensor((got - reference).abs().max().item(), device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(
            f"{world} ranks = {dp_size} data parallel x {tp} tensor parallel; sharded {counts}; "
            f"heads per rank {model.num_heads}; {len(texts)} texts; "
            f"max |sharded - unsharded| over all ranks: {worst.item():.2e}"
        )
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
