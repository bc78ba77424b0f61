"""Readable text of single tokens: a token that is only part of a multi-byte UTF-8 character
decodes to U+FFFD on its own; show its bytes as `<0xE2>` instead (as sentencepiece byte-fallback
tokens are written)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: printable stand-in character -> byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def bytes_text(raw: bytes) -> str:
    """`raw` as UTF-8 where it is valid, each invalid byte as `<0xNN>`."""
    out, i = [], 0
    while i < len(raw):
        for width in (1, 2, 3, 4):
            try:
                out.append(raw[i:i + width].decode("utf-8"))
                i += width
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
    return "".join(out)


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
