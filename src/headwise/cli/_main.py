"""The ``headwise`` command group and its error handling."""

from __future__ import annotations

import click

from headwise.cli.analyze_cmd import analyze_command
from headwise.cli.bench_cmd import bench_command
from headwise.cli.experiments_cmd import experiments_command
from headwise.cli.generate_cmd import chat_command, generate_command, perplexity_command
from headwise.cli.inspect_cmd import inspect_command
from headwise.cli.prune_cmd import prune_command
from headwise.cli.report_cmd import report_command
from headwise.cli.viz_cmd import viz_command


class _Group(click.Group):
    """Turns a user mistake (ValueError, TypeError, FileNotFoundError) into one line and exit 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as err:
            raise click.UsageError(str(err).splitlines()[0] if str(err) else type(err).__name__) from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headwise")
def main() -> None:
    """headwise: look at a transformer's attention heads, score them, remove them.

    MODEL is a Hugging Face style BERT folder (config.json, model.safetensors,
    tokenizer.json) or a shipped name; it defaults to all-MiniLM-L6-v2.

    \b
    Examples:
      headwise inspect
      headwise inspect ./my-bert --json
      headwise analyze --out analysis
      headwise prune --fraction 0.3 --out minilm-30
      headwise viz "The cat sat on the mat."
      headwise report --out report
      headwise bench --quick
      headwise experiments --quick --out claims
    """


main.add_command(inspect_command)
main.add_command(analyze_command)
main.add_command(prune_command)
main.add_command(viz_command)
main.add_command(bench_command)
main.add_command(report_command)
main.add_command(generate_command)
main.add_command(chat_command)
main.add_command(perplexity_command)
main.add_command(experiments_command)
