"""Attention modules built on :func:`headwise.functional.attention`."""

from headwise.modules.multihead import MultiheadAttention, replace_mha_

__all__ = ["MultiheadAttention", "replace_mha_"]
