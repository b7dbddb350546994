"""Tensor parallelism over heads on ``torch.distributed`` (DTensor).

``shard_heads_(model, mesh)`` splits every :class:`headwise.Attention` layer's heads
(and every feed-forward's hidden units) over a 1-D device mesh, Megatron-style; it
composes with FSDP2 (``fully_shard``) and DDP on a 2-D ("dp", "tp") mesh.
"""

from headwise.parallel._shard import shard_heads_

__all__ = ["shard_heads_"]
