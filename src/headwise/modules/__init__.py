"""Attention modules built on :func:`headwise.functional.attention`."""

from headwise.modules.attention import Attention
from headwise.modules.blocks import (
    CausalDecoder,
    Encoder,
    FeedForward,
    GatedFeedForward,
    PostNormBlock,
    PreNormBlock,
    decoder_block,
    encoder_block,
)
from headwise.modules.cache import KVCache
from headwise.modules.linear import Linear
from headwise.modules.multihead import MultiheadAttention, replace_mha_
from headwise.modules.rotary import RotaryEmbedding

__all__ = [
    "Attention",
    "CausalDecoder",
    "Encoder",
    "FeedForward",
    "GatedFeedForward",
    "KVCache",
    "Linear",
    "MultiheadAttention",
    "PostNormBlock",
    "PreNormBlock",
    "RotaryEmbedding",
    "decoder_block",
    "encoder_block",
    "replace_mha_",
]
