"""``headwise inspect [MODEL]``: layers, heads, head dim, parameters and the attention backend."""

from __future__ import annotations

import json

import click
import torch

DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: the ``--model`` option of the commands that also take MODEL as their first argument
model_option = click.option(
    "--model", "model_option", default=None, metavar="MODEL",
    help="The model, as an option (e.g. SmolLM2-135M-Instruct); the same as the MODEL argument.",
)


def pick_model(argument: str | None, option: str | None) -> str:
    """The model named by the MODEL argument or by ``--model`` (not two different ones), else the default."""
    if argument is not None and option is not None and argument != option:
        raise click.UsageError(f"MODEL {argument!r} and --model {option!r} disagree; name the model once.")
    return argument or option or DEFAULT_MODEL


def describe(model_ref: str) -> dict[str, object]:
    """What ``inspect`` reports about a model, as plain data."""
    import headwise
    import headwise.models

    model = headwise.models.load(model_ref)
    layers = model.attention_layers
    first = layers[0]
    heads = list(model.num_heads)
    total = sum(p.numel() for p in model.parameters())
    attention = sum(p.numel() for layer in layers for name, p in layer.named_parameters() if name != "head_gate")
    # which kernel a padded batch of 32 tokens would use, per layer shape
    q = torch.zeros(1, first.num_heads, 32, first.head_dim)
    mask = torch.ones(1, 1, 1, 32, dtype=torch.bool)
    explanation = headwise.explain(q, q, q, attn_mask=mask)
    weights_explanation = headwise.explain(q, q, q, attn_mask=mask, need_weights=True)
    return {
        "model": model_ref,
        "folder": str(model.source) if model.source is not None else None,
        "layers": len(layers),
        "heads_per_layer": heads,
        "heads_total": sum(heads),
        "kv_heads_per_layer": [layer.num_kv_heads for layer in layers],
        "head_dim": first.head_dim,
        "hidden_size": first.embed_dim,
        "parameters": total,
        "attention_parameters": attention,
        "backend": explanation.backend,
        "backend_with_weights": weights_explanation.backend,
        "backend_reasons": {k: v for k, v in weights_explanation.reasons.items() if v is not None},
        "torch": torch.__version__,
    }


@click.command("inspect")
@click.argument("model", required=False)
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect_command(model: str | None, model_option: str | None, as_json: bool) -> None:
    """Layers, heads per layer, head dim, parameters, and which attention backend runs.

    \b
    Examples:
      headwise inspect
      headwise inspect ./minilm-pruned --json
      headwise inspect --model SmolLM2-135M-Instruct
    """
    info = describe(pick_model(model, model_option))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['model']}", show_header=False)
    rows = [
        ("folder", info["folder"]),
        ("layers", info["layers"]),
        ("heads per layer", ", ".join(str(h) for h in info["heads_per_layer"])),
        ("heads in all", info["heads_total"]),
        ("kv heads per layer", ", ".join(str(h) for h in info["kv_heads_per_layer"])),
        ("head dim", info["head_dim"]),
        ("hidden size", info["hidden_size"]),
        ("parameters", f"{info['parameters']:,} ({info['attention_parameters']:,} in attention)"),
        ("attention backend", f"{info['backend']} (with weights: {info['backend_with_weights']})"),
        ("torch", info["torch"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    Console().print(table)
