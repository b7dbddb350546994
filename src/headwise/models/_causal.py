"""The causal language-model pipeline over a decoder network: tokenizer, generation, chat, perplexity.

:class:`CausalLM` is what :func:`headwise.models.load` returns for a decoder (SmolLM2 from
its GGUF file, a Hugging Face Llama folder).  Generation runs the network with one
preallocated :class:`~headwise.KVCache` per layer; batched prompts of different lengths
are left-padded, with rotary positions that count real tokens only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headwise.models._pipeline import Pipeline, as_text_list

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from headwise.models._files import Staging

__all__ = ["CausalLM", "GenerationConfig", "Perplexity", "SpecialTokenIds"]


@dataclass(frozen=True)
class SpecialTokenIds:
    """The special tokens a causal LM's pipeline uses: strings for chat templates, ids for generation."""

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None


@dataclass(frozen=True)
class GenerationConfig:
    """How :meth:`CausalLM.generate` picks tokens and when it stops.

    Args:
        max_new_tokens: the most tokens generated per prompt.
        do_sample: sample from the (filtered) distribution; ``False`` is greedy decoding.
        temperature: divides the logits before sampling (> 0).
        top_k: keep the k most likely tokens (``None``: all).
        top_p: keep the smallest set of most likely tokens whose probability reaches p (nucleus).
        seed: seed of the sampling generator (``None``: torch's global generator).
        stop: strings that end a prompt's generation; the text is cut before them.
        stop_at_eos: end a prompt's generation at an end-of-sequence token.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}.")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}; use do_sample=False for greedy.")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {self.top_k!r}.")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}.")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}.")
        object.__setattr__(self, "stop", stop)


@dataclass(frozen=True)
class Perplexity:
    """A perplexity measurement: exp of the mean next-token loss over ``tokens`` scored tokens."""

    value: float
    loss: float
    tokens: int
    windows: int
    context_length: int
    stride: int


class CausalLM(Pipeline):
    """A causal language model: generate, chat, score and inspect its heads.

    Args:
        network: the decoder, e.g. a :class:`headwise.models.LlamaModel`: its ``forward`` takes
            ``(input_ids, attention_mask, position_ids=, caches=, output_attentions=,
            logits_for=)`` and returns ``(logits, maps)``; it has ``new_caches``, ``config`` and
            ``attention_layers``.
        tokenizer: a ``tokenizers.Tokenizer``.
        special: the special tokens (bos/eos/pad strings and ids).
        chat_template: the Jinja chat template (for :meth:`chat`).
        source: the file or folder the model came from, for messages.

    It is a :class:`headwise.heads.HeadModel`: its ``outputs`` are the log-probabilities of
    every real next token, and ``loss`` the mean next-token loss.
    """

    output_kind = "log_probs"
    causal = True

    def __init__(
        self,
        network: nn.Module,
        *,
        tokenizer: Tokenizer | None = None,
        special: SpecialTokenIds | None = None,
        chat_template: str | None = None,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.tokenizer = tokenizer
        self.special = special or SpecialTokenIds(eos_token_ids=network.config.eos_token_ids)
        self.chat_template = chat_template
        self.source = None if source is None else Path(source)

    # -- what the network is ---------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        """Positions the model has (``max_position_embeddings``); :meth:`tokenize` truncates to it."""
        return self.config.max_position_embeddings

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        output_attentions: bool = False,
        **network_options: Any,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """The network's logits and, with ``output_attentions``, every layer's per-head maps.

        Right-padded batches (as :meth:`tokenize` makes them) need no position ids: padding
        comes after every real token.  A mask without padding is dropped (in eager mode), so the
        fused kernel applies the causal mask itself and skips the masked half of the scores.

        Shape:
            input_ids, attention_mask (B, L) -> logits (B, L, V), attentions[l] (B, H_l, L, L).
        """
        if attention_mask is not None and not torch.compiler.is_compiling() and bool(attention_mask.all()):
            attention_mask = None
        return self.network(input_ids, attention_mask, output_attentions=output_attentions, **network_options)

    # -- text ---------------------------------------------------------------------------------------

    def tokenize(
        self, texts: str | Sequence[str], *, add_special_tokens: bool = True, padding_side: str = "right"
    ) -> dict[str, Tensor]:
        """Token ids of ``texts``, truncated to :attr:`max_length`, padded to the longest.

        Right padding (the default) is what the forward pass and scoring expect; left padding
        is generation's layout (pass ``position_ids`` that count real tokens only, as
        :meth:`generate_tokens` does).

        Shape:
            returns ``input_ids`` and ``attention_mask``, each (B, L).
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        rows = self._token_ids(texts, add_special_tokens=add_special_tokens)
        return self._padded(rows, left=padding_side == "left")

    def truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` :meth:`tokenize` cuts to :attr:`max_length` tokens."""
        return sum(1 for e in self._encode(as_text_list(texts), True) if len(e.ids) > self.max_length)

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self._require_tokenizer().decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, through the model's chat template (as transformers renders it)."""
        from headwise.models._chat import render_chat

        if self.chat_template is None:
            raise ValueError(
                f"{self.source or 'this model'} has no chat template; pass a prompt to generate() instead, "
                "or set model.chat_template to a Jinja template."
            )
        special = self.special
        return render_chat(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt,
            bos_token=special.bos_token, eos_token=special.eos_token, source=f"{self.source or 'model'} chat template",
        )

    # -- what headwise.heads compares -----------------------------------------------------------

    def outputs(self, features: dict[str, Tensor]) -> Tensor:
        """Log-probabilities of the next token at every real position that has a real next token.

        Shape:
            features (B, L) each -> (N, V), N = sum over rows of (real tokens - 1).
        """
        logits, _ = self(features["input_ids"], features["attention_mask"])  # (B, L, V)
        scored = _next_token_positions(features["attention_mask"])  # (B, L) bool
        return F.log_softmax(_at_least_float32(logits[scored]), dim=-1)  # (N, V)

    def loss(self, features: dict[str, Tensor]) -> Tensor:
        """Mean next-token cross-entropy over the real tokens of a batch (a scalar, with autograd)."""
        logits, _ = self(features["input_ids"], features["attention_mask"])  # (B, L, V)
        scored = _next_token_positions(features["attention_mask"])  # (B, L)
        targets = features["input_ids"][:, 1:][scored[:, :-1]]  # (N,)
        return F.cross_entropy(_at_least_float32(logits[scored]), targets)

    # -- generation -----------------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[str],
        config: GenerationConfig | None = None,
        *,
        on_token: Callable[[int, str], None] | None = None,
        **options: Any,
    ) -> str | list[str]:
        """Continue each prompt; returns the generated text (without the prompt).

        Greedy by default; ``do_sample=True`` samples with ``temperature``, ``top_k``, ``top_p``
        and ``seed``.  Each prompt stops at ``max_new_tokens``, at an end-of-sequence token, or
        before the first of the ``stop`` strings.  Several prompts run as one left-padded batch
        through the KV cache.  ``on_token(row, text)`` is called with each row's new text as it
        comes (see :meth:`stream` for one prompt).

        Args:
            prompts: one prompt or several.
            config: a :class:`GenerationConfig`; or its fields as keywords (``max_new_tokens=...``).

        Returns:
            one str for one prompt, else a list in the order of ``prompts``.
        """
        settings = _settings(config, options)
        single = isinstance(prompts, str)
        texts = as_text_list(prompts)
        if not texts:
            raise ValueError("prompts is empty; give at least one prompt.")
        rows = self._token_ids(texts, add_special_tokens=True, truncate=False)
        out = [""] * len(rows)
        for row, piece in self._pieces(rows, settings, incremental=on_token is not None):
            out[row] += piece
            if on_token is not None:
                on_token(row, piece)
        return out[0] if single else out

    def stream(self, prompt: str, config: GenerationConfig | None = None, **options: Any) -> Iterator[str]:
        """Generate for one prompt, yielding text as it comes (the pieces join to :meth:`generate`'s text)."""
        if not isinstance(prompt, str):
            raise TypeError(f"stream takes one prompt (a str), got {type(prompt).__name__}; use generate for several.")
        settings = _settings(config, options)
        rows = self._token_ids([prompt], add_special_tokens=True, truncate=False)
        return (piece for _, piece in self._pieces(rows, settings, incremental=True))

    def chat(
        self, messages: Sequence[Mapping[str, Any]], config: GenerationConfig | None = None, **options: Any
    ) -> str:
        """The assistant's reply to a conversation, through the model's chat template.

        ``messages`` is a list of ``{"role": ..., "content": ...}`` dicts, as in transformers.
        """
        prompt = self.apply_chat_template(messages, add_generation_prompt=True)
        settings = _settings(config, options)
        rows = self._token_ids([prompt], add_special_tokens=False, truncate=False)
        return "".join(piece for _, piece in self._pieces(rows, settings, incremental=False))

    def _pieces(
        self, rows: list[list[int]], settings: GenerationConfig, *, incremental: bool = True
    ) -> Iterator[tuple[int, str]]:
        """``(row, new text)`` as each row's generated text grows.

        Text is held back while it ends in an incomplete character (U+FFFD from a partial byte
        sequence) or in what could be the start of a stop string, and flushed at the end.
        Without ``incremental`` (and without stop strings) each row is decoded once, at the end.
        """
        incremental = incremental or bool(settings.stop)
        batch = len(rows)
        eos = set(self.special.eos_token_ids) if settings.stop_at_eos else set()
        generated: list[list[int]] = [[] for _ in range(batch)]
        sent = [0] * batch  # characters of each row's text already yielded
        text = [""] * batch
        done = [False] * batch
        with torch.inference_mode():
            for step_tokens in self._tokens(rows, settings):
                for row, token in enumerate(step_tokens.tolist()):
                    if done[row]:
                        continue
                    if token in eos:
                        done[row] = True
                        continue
                    generated[row].append(token)
                    if not incremental:
                        continue
                    text[row] = self.decode(generated[row])
                    cut = _stop_position(text[row], settings.stop)
                    if cut is not None:
                        text[row], done[row] = text[row][:cut], True
                    ready = len(text[row]) if done[row] else _safe_length(text[row], settings.stop)
                    if ready > sent[row]:
                        yield row, text[row][sent[row] : ready]
                        sent[row] = ready
                if all(done):
                    break
        for row in range(batch):
            if not incremental:
                text[row] = self.decode(generated[row])
            if len(text[row]) > sent[row]:
                yield row, text[row][sent[row] :]

    def generate_tokens(
        self, rows: Sequence[Sequence[int]] | Tensor, config: GenerationConfig | None = None, **options: Any
    ) -> Iterator[Tensor]:
        """The next token of every row, step after step, through the KV caches (no text, no stopping).

        ``rows`` are prompts as token ids (a list of id lists of any lengths, or a (B, P) tensor);
        they are left-padded into one batch.  Yields ``max_new_tokens`` steps whatever tokens
        come (end-of-sequence and stop strings are :meth:`generate`'s business).

        Shape:
            yields (B,) token ids.
        """
        settings = _settings(config, options)
        rows = rows.tolist() if isinstance(rows, Tensor) else [list(r) for r in rows]
        if not rows or any(not r for r in rows):
            raise ValueError("rows must hold at least one prompt, each of at least one token id.")
        with torch.inference_mode():
            yield from self._tokens(rows, settings)

    def _tokens(self, rows: list[list[int]], settings: GenerationConfig) -> Iterator[Tensor]:
        network = self.network
        device = self._float_tensor().device
        batch, longest = len(rows), max(len(r) for r in rows)
        total = longest + settings.max_new_tokens
        if total > self.max_length:
            raise ValueError(
                f"the longest prompt has {longest} tokens; with max_new_tokens={settings.max_new_tokens} that is "
                f"{total} positions, past the model's {self.max_length}; shorten the prompt or generate fewer tokens."
            )
        padded = self._padded(rows, left=True)
        ids, real = padded["input_ids"], padded["attention_mask"]  # (B, L) each
        mask = None
        if not bool(real.all()):  # some prompt is shorter: left padding to keep out of attention
            mask = torch.zeros(batch, total, dtype=torch.long, device=device)  # (B, S)
            mask[:, :longest] = real
        positions = (real.cumsum(1) - 1).clamp_min(0)  # (B, L): real tokens count from 0
        caches = network.new_caches(batch, total)
        generator = None if settings.seed is None else torch.Generator(device=device).manual_seed(settings.seed)
        logits, _ = network(
            ids, None if mask is None else mask[:, :longest], position_ids=positions, caches=caches,
            logits_for=slice(-1, None),
        )  # (B, 1, V)
        next_position = positions[:, -1:] + 1  # (B, 1)
        for step in range(settings.max_new_tokens):
            token = _pick(logits[:, -1], settings, generator)  # (B,)
            yield token
            if step + 1 == settings.max_new_tokens:
                return
            length = longest + step + 1
            if mask is not None:
                mask[:, length - 1] = 1
            logits, _ = network(
                token[:, None], None if mask is None else mask[:, :length], position_ids=next_position, caches=caches
            )  # (B, 1, V)
            next_position = next_position + 1

    # -- perplexity -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def perplexity(
        self,
        texts: str | Sequence[str],
        *,
        context_length: int | None = None,
        stride: int | None = None,
        progress: bool = False,
    ) -> Perplexity:
        """Perplexity of ``texts`` with a sliding window, as in Hugging Face's guide for fixed-length models.

        The texts are joined with blank lines into one token stream.  Windows of
        ``context_length`` tokens start every ``stride`` tokens; each scores only the tokens
        the previous window did not (the first window scores all but its first token), so every
        scored token sees at least ``context_length - stride`` tokens of context, except at the
        start.  Defaults: ``context_length`` = min(1024, the stream's length), ``stride`` =
        ``context_length // 2``.

        Raises:
            ValueError: an explicit ``context_length`` longer than the text (or than the model's
                positions), a ``stride`` outside 1..context_length, fewer than two tokens.
        """
        joined = "\n\n".join(as_text_list(texts))
        ids = self._encode([joined], True)[0].ids
        count = len(ids)
        if count < 2:
            raise ValueError(f"the texts hold {count} token(s); perplexity needs at least 2.")
        if context_length is None:
            context_length = min(1024, count, self.max_length)
        elif isinstance(context_length, bool) or not isinstance(context_length, int) or not 2 <= context_length <= self.max_length:
            raise ValueError(f"context_length must be an int in 2..{self.max_length} (the model's positions), got {context_length!r}.")
        elif context_length > count:
            raise ValueError(
                f"context_length={context_length} is longer than the texts ({count} tokens); give longer texts "
                f"or context_length <= {count}."
            )
        stride = context_length // 2 if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context_length:
            raise ValueError(f"stride must be an int in 1..{context_length} (context_length), got {stride!r}.")
        device = self._float_tensor().device
        stream = torch.tensor(ids, device=device)
        starts = list(range(0, max(count - context_length, 0) + stride, stride))
        starts = [s for s in starts if s < count - 1] or [0]
        total, scored, previous_end = 0.0, 0, 0
        bar = _bar(len(starts), "perplexity", progress)
        for start in starts:
            end = min(start + context_length, count)
            window = stream[start:end][None]  # (1, w)
            logits, _ = self.network(window)  # (1, w, V)
            first = max(previous_end - start, 1)  # score only what earlier windows did not
            losses = F.cross_entropy(_at_least_float32(logits[0, first - 1 : -1]), window[0, first:], reduction="sum")
            total += float(losses)
            scored += end - start - first
            previous_end = end
            bar()
            if end == count:
                break
        bar(close=True)
        loss = total / scored
        return Perplexity(math.exp(loss), loss, scored, len(starts), context_length, stride)

    # -- saving ----------------------------------------------------------------------------------------

    def save_extras(self, files: Staging) -> None:
        """Stage tokenizer.json and tokenizer_config.json (with the chat template), as transformers reads them."""
        special = self.special
        if self.tokenizer is not None:
            files.write_text("tokenizer.json", self.tokenizer.to_str(pretty=True))
        settings: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.max_length,
            "clean_up_tokenization_spaces": False,
        }
        for name in ("bos_token", "eos_token", "pad_token"):
            if getattr(special, name) is not None:
                settings[name] = getattr(special, name)
        if self.chat_template is not None:
            settings["chat_template"] = self.chat_template
        files.write_json("tokenizer_config.json", settings)

    # -- helpers ---------------------------------------------------------------------------------------

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(
                f"{self.source or 'this model'} has no tokenizer; pass token ids to the model directly, "
                "or build it with tokenizer=tokenizers.Tokenizer.from_file(...)."
            )
        return self.tokenizer

    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[Any]:
        if not texts:
            raise ValueError("texts is empty; give at least one text.")
        return self._require_tokenizer().encode_batch(texts, add_special_tokens=add_special_tokens)

    def _token_ids(
        self, texts: str | Sequence[str], *, add_special_tokens: bool, truncate: bool = True
    ) -> list[list[int]]:
        rows = [e.ids for e in self._encode(as_text_list(texts), add_special_tokens)]
        empty = [i for i, r in enumerate(rows) if not r]
        if empty:
            raise ValueError(f"text {empty[0]} gives no tokens (an empty text?); every text needs at least one token.")
        return [r[: self.max_length] for r in rows] if truncate else rows

    def _padded(self, rows: list[list[int]], *, left: bool) -> dict[str, Tensor]:
        """Rows of ids padded to the longest, left or right.  Shape: -> (B, L) each."""
        device = self._float_tensor().device
        pad = self.special.pad_token_id
        if pad is None:
            pad = self.special.eos_token_ids[0] if self.special.eos_token_ids else 0
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        real = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(longest - len(row), longest) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            real[i, span] = 1
        return {"input_ids": ids.to(device), "attention_mask": real.to(device)}


def _at_least_float32(t: Tensor) -> Tensor:
    """Half types in float32 (softmax over a 49152-token vocabulary), float32 and float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _settings(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    if config is not None and not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig, got {type(config).__name__}.")
    if config is not None and options:
        raise ValueError(f"give a GenerationConfig or keywords, not both (got config and {sorted(options)}).")
    if config is not None:
        return config
    known = set(GenerationConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown generation option {unknown[0]!r}; expected one of {sorted(known)}.")
    return GenerationConfig(**options)


def _pick(logits: Tensor, settings: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """The next token of each row: argmax, or a sample from the temperature/top-k/top-p filtered distribution.

    Shape:
        logits (B, V) -> (B,).
    """
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature  # (B, V)
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = logits.topk(settings.top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        ordered = ordered.masked_fill(before >= settings.top_p, float("-inf"))  # the first token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def _stop_position(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def _next_token_positions(attention_mask: Tensor) -> Tensor:
    """Positions whose next position is a real token (right padding).  Shape: (B, L) -> (B, L) bool."""
    real = attention_mask.bool()  # (B, L)
    scored = torch.zeros_like(real)
    scored[:, :-1] = real[:, 1:] & real[:, :-1]
    return scored


def _safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be shown: not a trailing partial character, nor a possible stop string's start."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                held = max(held, size)
                break
    return end - held


def _bar(total: int, label: str, show: bool) -> Callable[..., None]:
    """``step()`` advances, ``step(close=True)`` closes: a tqdm bar when asked, else nothing."""
    if not show:
        return lambda close=False: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="window")

    def step(close: bool = False) -> None:
        if close:
            bar.close()
        else:
            bar.update(1)

    return step
