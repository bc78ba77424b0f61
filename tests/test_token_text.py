"""Per-token text: a token holding part of a multi-byte character shows its bytes, not U+FFFD."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workbench.models.token_text import bytes_text, readable_token


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world", "привет мир", "café olé"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_bytes_text_keeps_valid_utf8_and_hexes_the_rest():
    assert bytes_text("é".encode()) == "é"
    assert bytes_text(b"a\xd0") == "a<0xD0>"
    assert bytes_text("п".encode()[:1] + b"x") == "<0xD0>x"


def test_split_byte_token_shows_its_bytes():
    tok = _byte_level_tokenizer()
    lone = tok.convert_tokens_to_ids("Ð")  # the stand-in for byte 0xD0 alone
    assert "\ufffd" in tok.decode([lone])
    assert readable_token(tok, lone) == "<0xD0>"
    for i in range(len(tok)):
        assert "\ufffd" not in readable_token(tok, i)
    whole = tok.encode("hello")[0]
    assert readable_token(tok, whole) == tok.decode([whole])


def test_readable_text_joins_split_characters_and_shows_stray_bytes():
    from workbench.models.token_text import readable_text

    tok = _byte_level_tokenizer()
    ids = tok.encode("привет café", add_special_tokens=False)
    assert readable_text(tok, ids) == "привет café"
    lone = tok.convert_tokens_to_ids("Ð")  # byte 0xD0 alone: a generation stopped mid-character
    assert "\ufffd" in tok.decode(ids + [lone])
    assert readable_text(tok, ids + [lone]) == "привет café<0xD0>"
