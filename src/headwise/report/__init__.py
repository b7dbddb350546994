"""Reports: the whole head loop on a model, as one self-contained HTML page with its PNGs and JSON.

* :func:`write_report` (``headwise report``): a sentence encoder's heads: importance,
  statistics, redundancy, the pruning curve, the pruned model's speed, every head's map.
* :func:`write_decoder_report` (``headwise report --model SmolLM2-135M-Instruct``): a causal
  LM's heads: importance per query head and per kv group, sink heads, entropy and distance,
  the perplexity pruning curve, the streaming table, every head's map.
* :func:`streaming_perplexity`: a causal LM's perplexity on a long text with dense attention,
  a sliding window, and a window plus the first tokens kept as attention sinks.
"""

from headwise.report._decoder import DecoderReportSettings, decoder_report_steps, write_decoder_report
from headwise.report._encoder import ReportSettings, attention_maps, report_steps, write_report
from headwise.report._streaming import StreamingRow, streaming_perplexity

__all__ = [
    "DecoderReportSettings",
    "ReportSettings",
    "StreamingRow",
    "attention_maps",
    "decoder_report_steps",
    "report_steps",
    "streaming_perplexity",
    "write_decoder_report",
    "write_report",
]
