"""Small labs for tests.

`small_lm_setup` makes the pieces of a test lab in a second or two (a corpus of Debian fortunes
in three languages, a byte-level BPE tokenizer trained on it, a randomly initialized
HookedTransformer), for tests of code that only needs *a* model.
`build_tiny_lab(root)` builds a small lab end to end with the real components.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from workbench.data.store import Corpus, load_corpus, write_split
from workbench.lab import Lab

FORTUNES = Path("/usr/share/games/fortunes")
SMALL_LANGUAGES = {"en": FORTUNES / "fortunes", "de": FORTUNES / "de" / "zitate",
                   "ru": FORTUNES / "ru" / "life"}


ARCH_KW = {
    "topk": {"latents": 64, "k": 4},
    "batchtopk": {"latents": 64, "k": 4},
    "topafa": {"latents": 64},
    "structured": {"groups": 16, "group_size": 4, "k_groups": 3},
    "relu": {"latents": 64},
    "jumprelu": {"latents": 64, "jumprelu_init_threshold": 0.1},
}
"""SAETrainConfig fields giving every architecture 64 latents on small test inputs."""


def read_fortunes(file: Path, limit: int) -> list[str]:
    """Up to `limit` fortunes (entries separated by '%' lines) of one fortune file."""
    entries = file.read_text(encoding="utf-8", errors="replace").split("\n%\n")
    texts = [" ".join(e.split()) for e in entries]
    return [t for t in texts if len(t) > 20][:limit]


def small_corpus(lab: Lab, name: str = "corpus", per_language: int = 120,
                 languages: dict[str, Path] | None = None) -> Corpus:
    """A corpus artifact of `per_language` fortunes per language (1/5 in validation)."""
    rows = []
    for language, file in (languages or SMALL_LANGUAGES).items():
        for text in read_fortunes(file, per_language):
            rows.append({"doc_id": len(rows), "text": text, "language": language,
                         "source": f"fortunes:{file.name}"})
    frame = pd.DataFrame(rows)
    is_val = frame.doc_id % 5 == 0
    with lab.new_artifact("corpus", name) as art:
        write_split(art.path, "train", frame[~is_val])
        write_split(art.path, "validation", frame[is_val])
        art.manifest["languages"] = sorted(frame.language.unique())
    return load_corpus(lab, name)


def small_lm_setup(root: Path, n_ctx: int = 64, seed: int = 0):
    """(lab, corpus, model) in a second or two: `small_corpus`, a 512-token BPE tokenizer
    artifact `tok` trained on it, and a randomly initialized `tiny` preset LM with the tokenizer
    attached (also stored, untrained, as model artifact `lm`)."""
    from workbench.models.architectures import quiet_hooked_transformer
    from workbench.models.model_io import write_model_folder
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer, train_tokenizer_artifact

    lab = Lab(root)
    corpus = small_corpus(lab)
    train_tokenizer_artifact(lab, corpus.name, "tok", vocab_size=512)
    tokenizer = load_tokenizer(lab, "tok")
    torch.manual_seed(seed)
    model = quiet_hooked_transformer(lm_config("tiny", d_vocab=len(tokenizer), n_ctx=n_ctx),
                                     tokenizer)
    with lab.new_artifact("model", "lm", parents=[corpus.name, "tok"]) as art:
        write_model_folder(art.path, model, tokenizer)   # untrained: `load_model("lm", lab)`
    return lab, corpus, model.eval()


def build_tiny_lab(root: Path, chars_per_language: int = 30_000, lm_steps: int = 400,
                   acts_tokens: int = 20_000) -> Lab:
    """A small lab built end to end with the real components:

    corpus `corpus` (the default recipe with a small character budget per language), tokenizer
    `tok` (byte-level BPE, 512 tokens), LM `lm` (tiny preset, `lm_steps` steps), activations
    `acts` (`acts_tokens` tokens at blocks.0.hook_resid_post).
    """
    from workbench.activations import cache_activations
    from workbench.data.build import build_corpus
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer, train_tokenizer_artifact
    from workbench.models.training import LMTrainConfig, train_lm

    lab = Lab(root)
    build_corpus(lab, "default", name="corpus", chars_per_language=chars_per_language)
    train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=512)
    tokenizer = load_tokenizer(lab, "tok")
    train_lm(lab, "lm", "corpus", "tok", lm_config("tiny", d_vocab=len(tokenizer)),
             LMTrainConfig(steps=lm_steps, batch_size=16, warmup_steps=20, eval_every=lm_steps,
                           eval_sequences=32, final_eval_sequences=64, save_every=lm_steps),
             progress=False)
    cache_activations(lab, "acts", "lm", "blocks.0.hook_resid_post", "corpus",
                      n_tokens=acts_tokens, progress=False)
    return lab
