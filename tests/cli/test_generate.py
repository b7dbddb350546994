"""``headwise generate``, ``chat`` and ``perplexity`` on a decoder folder (a small random Llama saved by headwise)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import headwise.models as hm
from headwise.cli import main
from tests.parallel._checks import _tiny_causal_lm

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    model = _tiny_causal_lm(2)
    model.chat_template = TEMPLATE
    folder = model.save(tmp_path_factory.mktemp("decoder") / "tiny")
    return hm.load(folder), folder


def test_generate_streams_what_the_library_generates(decoder):
    model, folder = decoder
    result = CliRunner().invoke(main, ["generate", "The cat", "--model", str(folder), "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert result.output == model.generate("The cat", max_new_tokens=12) + "\n"
    sampled = ["generate", "The cat", "--model", str(folder), "--max-new-tokens", "12", "--sample", "--seed", "3"]
    again = CliRunner().invoke(main, sampled)
    assert again.output == CliRunner().invoke(main, sampled).output
    assert again.output == model.generate("The cat", max_new_tokens=12, do_sample=True, seed=3) + "\n"


def test_chat_from_messages_and_from_standard_input(decoder, recwarn):
    model, folder = decoder
    first = model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=6)
    second = model.chat(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first}, {"role": "user", "content": "Bye"}],
        max_new_tokens=6,
    )
    args = ["chat", "--model", str(folder), "--max-new-tokens", "6"]
    result = CliRunner().invoke(main, [*args, "--message", "Hi", "--message", "Bye"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{first}\n{second}\n"
    piped = CliRunner().invoke(main, args, input="Hi\n\nBye\n")
    assert piped.output == result.output
    assert [str(w.message) for w in recwarn if issubclass(w.category, DeprecationWarning)] == []  # click's stdin API


def test_perplexity_of_a_file(decoder, tmp_path, recwarn):
    model, folder = decoder
    path = tmp_path / "text.txt"
    path.write_text("The quick brown fox.\nIt jumps over the dog.\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["perplexity", "--model", str(folder), "--texts", str(path), "--json"])
    assert result.exit_code == 0, result.output
    expected = model.perplexity(["The quick brown fox.", "It jumps over the dog."])
    assert json.loads(result.stdout)["value"] == pytest.approx(expected.value, rel=1e-12)
    piped = CliRunner().invoke(main, ["perplexity", "--model", str(folder), "--texts", "-"], input=path.read_text())
    assert piped.exit_code == 0 and f"perplexity {expected.value:.3f}" in piped.output
    assert [str(w.message) for w in recwarn if issubclass(w.category, DeprecationWarning)] == []  # click's stdin API


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["generate", "x", "--top-p", "0.9"], r"--temperature, --top-k and --top-p shape sampling; add --sample"),
        (["generate", "x", "--model", "all-MiniLM-L6-v2"], r"not a decoder; give a causal LM"),
        (["perplexity", "--texts", "nowhere.txt"], r"nowhere.txt"),
    ],
)
def test_errors_are_one_line(args, match):
    import re

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert re.search(match, result.output), result.output
    assert "Traceback" not in result.output


def test_non_utf8_texts(decoder, tmp_path):
    _, folder = decoder
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["perplexity", "--model", str(folder), "--texts", str(path)])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output and "save it as UTF-8" in result.output
