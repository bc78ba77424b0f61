"""Byte-level BPE tokenizers, trained with `tokenizers` and wrapped for `transformers`.

The tokenizer works on UTF-8 bytes (no unknown tokens, any script), normalizes text to NFC and
has three special tokens: BOS `<|bos|>` (id 0), EOS `<|eos|>` (id 1) and PAD `<|pad|>` (id 2).
Encoding a text prepends BOS (`tokenizer("Hallo")["input_ids"] == [0, ...]`), which is what
TransformerLens expects: `HookedTransformer(cfg, tokenizer=tok)` detects that the tokenizer
prepends BOS, so `to_tokens(text)` starts with BOS and `to_tokens(text, prepend_bos=False)` does
not. Pass `add_special_tokens=False` to get the bare token ids of a fragment.

A tokenizer artifact (kind `tokenizer`) is a `save_pretrained` folder plus the lab manifest, so
`AutoTokenizer.from_pretrained(artifact.path)` works outside the workbench too.

llama.cpp: the pre-tokenizer (how text is split before the BPE merges) is exactly GPT-2's
byte-level one (`GPT2_PRE_TOKENIZER`: GPT-2's split regex, no prefix space), which llama.cpp
implements as the pre-tokenizer "gpt-2". llama.cpp's converter recognizes a pre-tokenizer by a
hash of the token *ids* it produces on a fixed text, so no tokenizer with a vocabulary of its own
can match a listed hash; `llamacpp_pre_tokenizer(tok)` checks that `tok` splits like GPT-2 and
names the llama.cpp entry ("gpt-2") to register its hash under (see `workbench.models.llamacpp`).
The corpus is NFC-normalized when it is built, so the tokenizer's NFC normalizer (which llama.cpp
does not apply) changes nothing on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from workbench.errors import InvalidInputError, WorkbenchError
from workbench.lab import Artifact, Lab

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
DEFAULT_VOCAB_SIZE = 4096
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
# GPT-2's byte-level pre-tokenizer as `tokenizers` serializes it; llama.cpp's name for it.
GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True}
LLAMACPP_PRE_TOKENIZER = "gpt-2"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for `transformers`.

    The vocabulary holds the 256 byte symbols, the three special tokens and up to
    `vocab_size - 259` merges (fewer when the texts do not support that many pairs seen at least
    `min_frequency` times); `len(tokenizer)` is the real size.
    """
    if vocab_size < _MIN_VOCAB:
        raise InvalidInputError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {_MIN_VOCAB} "
            "entries (256 bytes + 3 special tokens)"
        )
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise InvalidInputError("cannot train a tokenizer on an empty corpus; build a corpus first")
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return wrap_tokenizer(core)


def wrap_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` that has our special tokens; encoding prepends BOS."""
    bos_id = core.token_to_id(BOS_TOKEN)
    if bos_id is None or core.token_to_id(EOS_TOKEN) is None or core.token_to_id(PAD_TOKEN) is None:
        raise InvalidInputError(f"the tokenizer lacks the special tokens {SPECIAL_TOKENS}")
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
    )
    return mark_bos_prepending(tok)


def mark_bos_prepending(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Declare that `tok` prepends BOS, so TransformerLens uses it as is instead of reloading it.

    (TransformerLens' `set_tokenizer` re-creates a tokenizer from its folder unless its
    `add_bos_token` is true; transformers 5 does not save that flag, so it is set again here.)
    """
    if tok.bos_token_id is not None and tok.encode("")[:1] == [tok.bos_token_id]:
        tok.add_bos_token = True
    return tok


def llamacpp_pre_tokenizer(tok: PreTrainedTokenizerBase | Tokenizer) -> str:
    """llama.cpp's name for `tok`'s pre-tokenizer ("gpt-2"), after checking that `tok` is a
    byte-level BPE whose pre-tokenizer is exactly GPT-2's (`GPT2_PRE_TOKENIZER`).

    Raises InvalidInputError naming the difference otherwise (llama.cpp would split such text
    differently from the tokenizer the model was trained with).
    """
    core = tok if isinstance(tok, Tokenizer) else getattr(tok, "backend_tokenizer", None)
    if core is None:
        raise InvalidInputError("llama.cpp needs a fast (tokenizers) BPE tokenizer; this one "
                                f"is a {type(tok).__name__}")
    spec = json.loads(core.to_str())
    model_type = (spec.get("model") or {}).get("type")
    pre = spec.get("pre_tokenizer")
    if model_type != "BPE":
        raise InvalidInputError(f"the tokenizer model is {model_type!r}, not a byte-level BPE; "
                                "llama.cpp's gpt-2 pre-tokenizer does not apply")
    if pre != GPT2_PRE_TOKENIZER:
        raise InvalidInputError(
            f"the tokenizer's pre-tokenizer {pre} is not GPT-2's byte-level one "
            f"{GPT2_PRE_TOKENIZER}; llama.cpp knows no entry that splits like it. Retrain the "
            "tokenizer with `workbench lm tokenizer`")
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        raise InvalidInputError(f"the tokenizer normalizes text with {normalizer}, which "
                                "llama.cpp does not do; retrain it with `workbench lm tokenizer`")
    return LLAMACPP_PRE_TOKENIZER


def tokenizer_stats(tok: PreTrainedTokenizerBase, texts: Sequence[str],
                    languages: Sequence[str] | None = None) -> dict[str, float]:
    """Characters per token on `texts` (overall and, given `languages`, per language)."""
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    stats = {"chars_per_token": _ratio(sum(map(len, texts)), sum(map(len, ids)))}
    if languages is not None:
        per_lang: dict[str, list[int]] = {}
        for text, toks, lang in zip(texts, ids, languages):
            counts = per_lang.setdefault(lang, [0, 0])
            counts[0] += len(text)
            counts[1] += len(toks)
        for lang, (n_chars, n_tokens) in sorted(per_lang.items()):
            stats[f"chars_per_token_{lang}"] = _ratio(n_chars, n_tokens)
    return stats


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def save_tokenizer_artifact(
    lab: Lab,
    name: str,
    tok: PreTrainedTokenizerBase,
    parents: Sequence[str] = (),
    config: dict | None = None,
    metrics: dict | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Store `tok` as a tokenizer artifact (a `save_pretrained` folder)."""
    with lab.new_artifact("tokenizer", name, parents=parents, config=config,
                          overwrite=overwrite) as art:
        tok.save_pretrained(str(art.path))
        art.manifest["vocab_size"] = len(tok)
        art.manifest["special_tokens"] = {
            "bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token,
        }
        art.metrics.update({"vocab_size": len(tok), **(metrics or {})})
    return lab.get(name, kind="tokenizer")


def train_tokenizer_artifact(
    lab: Lab, corpus_name: str, name: str, vocab_size: int = DEFAULT_VOCAB_SIZE,
    overwrite: bool = False,
) -> Artifact:
    """Train a tokenizer on the train split of a corpus and store it (`workbench lm tokenizer`)."""
    from workbench.data.store import load_corpus

    if lab.exists(name) and not overwrite:
        raise InvalidInputError(
            f"artifact {name!r} already exists; pick another --name or pass --overwrite"
        )
    corpus = load_corpus(lab, corpus_name)
    tok = train_tokenizer(corpus.texts("train"), vocab_size=vocab_size)
    val = corpus.frame("validation")
    metrics = tokenizer_stats(tok, val.text.tolist(), val.language.tolist()) if len(val) else {}
    return save_tokenizer_artifact(
        lab, name, tok, parents=[corpus_name],
        config={"corpus": corpus_name, "vocab_size": vocab_size, "type": "byte-level BPE"},
        metrics=metrics, overwrite=overwrite,
    )


def load_tokenizer_folder(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a `save_pretrained` tokenizer folder, with a clear error when it is unreadable."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise WorkbenchError(
            f"cannot load the tokenizer in {path} ({exc}); rebuild it with `workbench lm tokenizer`"
        ) from exc
    return mark_bos_prepending(tok)


def load_tokenizer(lab: Lab, name: str) -> PreTrainedTokenizerBase:
    """The tokenizer stored as artifact `name`."""
    return load_tokenizer_folder(lab.get(name, kind="tokenizer").path)
