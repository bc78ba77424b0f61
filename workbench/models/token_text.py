"""Readable text of single tokens: a token that is only part of a multi-byte UTF-8 character
decodes to U+FFFD on its own; show its bytes as `<0xE2>` instead (as sentencepiece byte-fallback
tokens are written)."""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: printable stand-in character -> byte value."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: each undecodable byte as `<0xNN>`."""
    bad = err.object[err.start:err.end]
    return "".join(f"<0x{b:02X}>" for b in bad), err.end


codecs.register_error("workbench-hex-bytes", _hex_bytes)


def bytes_text(raw: bytes) -> str:
    """`raw` as UTF-8 where it is valid, each invalid byte as `<0xNN>`."""
    return raw.decode("utf-8", errors="workbench-hex-bytes")


def readable_token(tokenizer: Any, token_id: int) -> str:
    """The token decoded on its own; a split-byte token (decoding to U+FFFD) as its bytes in
    hex, e.g. '<0xE2><0x80>'."""
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str):
        table = _byte_decoder()
        if piece and all(ch in table for ch in piece):
            return bytes_text(bytes(table[ch] for ch in piece))
        if piece.startswith("<0x"):
            return piece
    return text.replace("\ufffd", "<?>")


def readable_text(tokenizer: Any, token_ids: list[int], skip_special_tokens: bool = True) -> str:
    """A token sequence decoded as one text (a character split across tokens is joined); bytes
    that are still not valid UTF-8 (e.g. a generation that stopped inside a character, or a
    model writing a stray continuation byte) show as `<0xNN>` instead of U+FFFD."""
    text = tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
    if "\ufffd" not in text:
        return text
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if skip_special_tokens else set()
    pieces = tokenizer.convert_ids_to_tokens([t for t in token_ids if t not in special])
    table = _byte_decoder()
    if all(isinstance(p, str) and all(ch in table for ch in p) for p in pieces):
        return bytes_text(bytes(table[ch] for p in pieces for ch in p))
    return text  # not a byte-level BPE vocabulary: keep the tokenizer's own decoding
