"""Tokenizers behind one small interface, and an incremental detokenizer (reads model files only).

`load_tokenizer` wraps a model folder's fast tokenizer (transformers, local files only);
`ByteTokenizer` is a deterministic stand-in for engines with no model files (the simulator);
`IncrementalDecoder` turns a stream of token ids into text deltas that never split a
multi-byte character, the way vLLM's detokenizer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Prompt tokens kept as left context when decoding the first generated tokens (vLLM uses 5):
# some tokenizers render a token differently at the start of a text than after another token.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


@runtime_checkable
class Tokenizer(Protocol):
    eos_token_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the special tokens the model adds to plain text (e.g. BOS)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens left out; an incomplete UTF-8 tail decodes to U+FFFD."""
        ...

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, ending with the prompt that opens the assistant's turn."""
        ...


class HfTokenizer:
    """A transformers fast tokenizer loaded from a model folder."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.eos_token_id: int | None = tok.eos_token_id
        self.vocab_size: int = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self._tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The fast tokenizer saved in `model_dir`; never downloads."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
    return HfTokenizer(tok)


class ByteTokenizer:
    """UTF-8 bytes shifted by `offset`; ids below the offset are specials (0 pad, 1 bos, 2 eos)."""

    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, offset: int = 3) -> None:
        if offset < 3:
            raise ValueError(f"offset must leave room for pad/bos/eos (>= 3), got {offset}")
        self.offset = offset
        self.eos_token_id: int | None = self.EOS
        self.vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        data = bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return [self.BOS, *self.encode(text + "<|assistant|>\n")]


class IncrementalDecoder:
    """Streams text deltas for token ids pushed a few at a time.

    Keeps a window of already-emitted tokens as context and holds back text that ends in an
    incomplete character (U+FFFD) until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int] | None = None) -> None:
        self._tok = tokenizer
        # Context tokens (already shown) followed by pending tokens (not yet shown).
        self._ids: list[int] = list(prompt_token_ids or [])[-_CONTEXT_TOKENS:]
        self._read_offset = len(self._ids)

    def push(self, ids: list[int]) -> str:
        """Add generated token ids; return the new text they complete (may be "")."""
        self._ids.extend(ids)
        prefix_text = self._tok.decode(self._ids[: self._read_offset])
        full_text = self._tok.decode(self._ids)
        if full_text.endswith(_REPLACEMENT) or len(full_text) <= len(prefix_text):
            return ""  # wait for the rest of a multi-byte character (or nothing visible yet)
        self._mark_shown()
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held back at the end of the stream (an incomplete character shows as U+FFFD)."""
        prefix_text = self._tok.decode(self._ids[: self._read_offset])
        full_text = self._tok.decode(self._ids)
        self._mark_shown()
        return full_text[len(prefix_text) :]

    def _mark_shown(self) -> None:
        """The pending tokens become the context window; older context is dropped."""
        del self._ids[: self._read_offset]
        self._read_offset = len(self._ids)
