"""``headwise generate "PROMPT"``, ``headwise chat`` and ``headwise perplexity``: the decoder from the command line."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_DECODER = "SmolLM2-135M-Instruct"


def _model_option(function):
    return click.option(
        "--model", "model_ref", default=DEFAULT_DECODER, show_default=True,
        help="A decoder: a shipped name, a .gguf file or a Hugging Face Llama folder.",
    )(function)


def _generation_options(function):
    options = [
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--sample", is_flag=True, help="Sample instead of greedy decoding."),
        click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample from the k most likely tokens."),
        click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=None, help="Nucleus sampling."),
        click.option("--seed", type=int, default=None, help="Seed of the sampling (the same seed, the same text)."),
        click.option("--stop", multiple=True, help="A string that ends the generation (repeatable)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _decoder(model_ref: str):
    import headwise.models

    model = headwise.models.load(model_ref)
    if not isinstance(model, headwise.models.CausalLM):
        raise ValueError(f"--model {model_ref}: a {type(model).__name__}, not a decoder; give a causal LM, e.g. {DEFAULT_DECODER}.")
    return model


def _settings(max_new_tokens, sample, temperature, top_k, top_p, seed, stop):
    from headwise.models import GenerationConfig

    if not sample and (top_k is not None or top_p is not None or temperature != 1.0):
        raise click.UsageError("--temperature, --top-k and --top-p shape sampling; add --sample to use them.")
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, stop=tuple(stop),
    )


@click.command("generate")
@click.argument("prompt")
@_model_option
@_generation_options
def generate_command(prompt: str, model_ref: str, **generation) -> None:
    """Continue PROMPT with a decoder, printing the text as it comes.

    \b
    Examples:
      headwise generate "The capital of France is"
      headwise generate "def fibonacci(n):" --max-new-tokens 64 --stop "\\n\\n"
      headwise generate "Once upon a time" --sample --temperature 0.8 --top-p 0.95 --seed 1
    """
    settings = _settings(**generation)
    model = _decoder(model_ref)
    for piece in model.stream(prompt, settings):
        click.echo(piece, nl=False)
    click.echo()


@click.command("chat")
@_model_option
@click.option("--system", default=None, help="A system message that starts the conversation.")
@click.option("--message", "messages", multiple=True, help="A user message (repeatable); without one, read lines from standard input.")
@_generation_options
def chat_command(model_ref: str, system: str | None, messages: tuple[str, ...], **generation) -> None:
    """Talk to a decoder through its chat template; one user message per line of standard input.

    \b
    Examples:
      headwise chat --message "What is the capital of France?"
      printf 'Hi!\\nWhat is 2 + 2?\\n' | headwise chat
    """
    settings = _settings(**generation)
    model = _decoder(model_ref)
    history = [] if system is None else [{"role": "system", "content": system}]
    stdin = click.open_file("-")  # standard input as text (click.get_text_stream is deprecated in click 8.5)
    interactive = not messages and stdin.isatty()
    lines = messages or stdin
    if interactive:
        click.echo("(an empty line or Ctrl-D ends the chat)", err=True)
    for line in lines:
        text = line.rstrip("\n")
        if not text.strip():
            if interactive:
                break
            continue
        history.append({"role": "user", "content": text})
        reply = model.chat(history, settings)
        history.append({"role": "assistant", "content": reply})
        click.echo(reply)


@click.command("perplexity")
@_model_option
@click.option("--texts", "texts_path", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="A text file ('-' for standard input); its lines are joined.")
@click.option("--context-length", type=click.IntRange(min=2), default=None, help="Tokens per window (default: min(1024, the text)).")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Tokens between window starts (default: half the context).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def perplexity_command(model_ref: str, texts_path: str, context_length: int | None, stride: int | None, as_json: bool) -> None:
    """Perplexity of a text under a decoder, with a sliding window.

    \b
    Examples:
      headwise perplexity --texts book.txt
      headwise perplexity --texts book.txt --context-length 512 --stride 256 --json
    """
    import json
    from dataclasses import asdict

    stream = click.open_file("-") if texts_path == "-" else None
    try:
        text = stream.read() if stream is not None else Path(texts_path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise click.UsageError(f"--texts {texts_path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8.") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise click.UsageError(f"--texts {texts_path} holds no text.")
    model = _decoder(model_ref)
    result = model.perplexity(lines, context_length=context_length, stride=stride, progress=True)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(
        f"perplexity {result.value:.3f} over {result.tokens} tokens ({result.windows} windows of "
        f"{result.context_length}, stride {result.stride})"
    )
