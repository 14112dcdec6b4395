"""Tokenizers (the tiny model's and the byte fallback) and the incremental detokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from basalt.tokenizer import ByteTokenizer, IncrementalDecoder, Tokenizer, load_tokenizer

TEXTS = [
    "The cat sees the house.",
    "Café, naïve — 你好，世界 🙂🚀 done",
    "def f(x):\n    return 1\n",
]


@pytest.fixture(scope="module")
def hf(tiny_model: Path) -> Tokenizer:
    return load_tokenizer(tiny_model)


@pytest.mark.parametrize("text", TEXTS)
def test_model_tokenizer_round_trips(hf: Tokenizer, text: str) -> None:
    ids = hf.encode(text)
    assert ids and all(0 <= i < hf.vocab_size for i in ids)
    assert hf.decode(ids) == text


def test_model_tokenizer_knows_its_specials(hf: Tokenizer) -> None:
    assert isinstance(hf, Tokenizer)
    assert hf.vocab_size == 1000
    assert hf.eos_token_id is not None
    assert hf.decode(hf.encode("hi") + [hf.eos_token_id]) == "hi"  # specials are not shown


def test_chat_template_ends_with_assistant_prompt(hf: Tokenizer) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    ids = hf.apply_chat_template(msgs)
    assert all(isinstance(i, int) for i in ids)
    text = hf.decode(ids)  # the ChatML markers are specials, so they are not shown
    assert text.startswith("system\nBe brief.")
    assert text.endswith("user\nHello!\nassistant\n")


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert min(ids) >= 3 and max(ids) < tok.vocab_size
    assert tok.decode([ByteTokenizer.BOS, *ids, ByteTokenizer.EOS]) == text


def test_byte_tokenizer_chat_template_mentions_each_turn() -> None:
    tok = ByteTokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi there"}])
    assert ids[0] == ByteTokenizer.BOS
    assert tok.decode(ids).endswith("hi there\n<|assistant|>\n")


def _stream(tok: Tokenizer, ids: list[int], prompt: list[int] | None = None) -> list[str]:
    dec = IncrementalDecoder(tok, prompt)
    deltas = [dec.push([i]) for i in ids]
    return deltas + [dec.flush()]


@pytest.mark.parametrize("use_hf", [True, False])
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_and_never_split_a_character(hf: Tokenizer, use_hf: bool, text: str) -> None:
    tok = hf if use_hf else ByteTokenizer()
    prompt = tok.encode("Once upon a time")
    deltas = _stream(tok, tok.encode(text), prompt)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_emoji_waits_for_its_last_byte() -> None:
    tok = ByteTokenizer()
    deltas = _stream(tok, tok.encode("a🙂b"))
    assert deltas == ["a", "", "", "", "🙂", "b", ""]


def test_flush_shows_a_truncated_character() -> None:
    tok = ByteTokenizer()
    dec = IncrementalDecoder(tok)
    assert dec.push(tok.encode("x")) == "x"
    assert dec.push(tok.encode("🙂")[:2]) == ""  # two of the emoji's four bytes
    assert dec.flush() == "\ufffd"


def test_pushing_several_tokens_at_once(hf: Tokenizer) -> None:
    text = "Hello, world! How are you today? 你好"
    ids = hf.encode(text)
    dec = IncrementalDecoder(hf)
    out = [dec.push(ids[i : i + 3]) for i in range(0, len(ids), 3)]
    assert "".join(out) + dec.flush() == text
