"""Cache the activations of one hook point over a corpus into a sharded activations artifact.

    store = cache_activations(lab, "lm-l1-acts", "lm", "blocks.1.hook_resid_post", "corpus",
                              n_tokens=1_000_000)

Streaming all the way: documents are tokenized a chunk at a time, packed into BOS-led windows
(see `windows.py`; BOS and EOS positions are not stored), run through the model up to the
hook's layer one model batch at a time, and written to shards of `shard_tokens` tokens as each
fills, so memory holds one shard and one model batch whatever `n_tokens` is.

Shards are written to `lab.work_dir(name)` first, with a progress file; rerunning the same
command after an interruption keeps the finished shards and computes only the rest. The
artifact appears (atomically, through `Lab.new_artifact`) only when every token is cached.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from workbench.activations.live import check_context_size, iter_activation_chunks
from workbench.activations.memory import peak_rss_mb
from workbench.activations.shards import ShardInfo, ShardWriter, torch_dtype
from workbench.activations.store import ActivationStore
from workbench.activations.windows import PACKINGS
from workbench.data.store import Corpus, load_corpus
from workbench.errors import InvalidInputError, WorkbenchError
from workbench.lab import Artifact, Lab, read_json, validate_name, write_json
from workbench.models.hooks import validate_hook
from workbench.models.loading import load_model

PROGRESS_FILE = "cache_progress.json"


@dataclass
class CacheConfig:
    """What to cache. `model_batch_size` windows of `context_size` tokens go through the model
    at once (None: `default_model_batch_size`, about 1k tokens on CPU); `seed` fixes the
    document order (documents are shuffled so that a prefix of a corpus stored language by
    language still mixes all languages); `packing` is "concat" (sae-lens style, no padding) or
    "document" (each document in contexts of its own); see `windows.py`."""

    hook: str
    n_tokens: int
    context_size: int = 128
    split: str = "train"
    shard_tokens: int = 65536
    dtype: str = "float32"
    model_batch_size: int | None = None
    seed: int = 0
    shuffle_documents: bool = True
    packing: str = "concat"

    def check(self) -> None:
        torch_dtype(self.dtype)
        if self.packing not in PACKINGS:
            raise InvalidInputError(f"unknown packing {self.packing!r}; use one of {PACKINGS}")
        for field_name in ("n_tokens", "context_size", "shard_tokens", "model_batch_size"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise InvalidInputError(f"{field_name} must be positive, got {value}")


def default_activations_name(model_name: str, hook: str) -> str:
    """`<model>-<hook>-acts`, reduced to the characters artifact names allow."""
    base = Path(str(model_name)).name or "model"
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"{base}-{hook}-acts").replace("..", ".")
    return validate_name(name.lstrip("-._")[-100:].lstrip("-._"))


def cache_activations(
    lab: Lab,
    name: str | None,
    model_spec,
    hook: str,
    corpus: Corpus | str,
    n_tokens: int,
    context_size: int = 128,
    split: str = "train",
    shard_tokens: int = 65536,
    dtype: str = "float32",
    model_batch_size: int | None = None,
    seed: int = 0,
    packing: str = "concat",
    device=None,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Cache `n_tokens` text tokens of activations at `hook` and return the store.

    `model_spec`: a lab model name, TransformerLens name or HF folder (see `load_model`), or a
    HookedTransformer with a tokenizer. `name=None` -> `default_activations_name`. Fewer tokens
    are stored when the split is smaller (metrics `corpus_exhausted`).
    """
    cfg = CacheConfig(hook, n_tokens, context_size, split, shard_tokens, dtype,
                      model_batch_size, seed, packing=packing)
    cfg.check()
    model_name = _model_name(model_spec)
    name = validate_name(name) if name else default_activations_name(model_name, hook)
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(
            f"artifact {name!r} already exists; pick another --name, pass --overwrite, or remove "
            f"it with `workbench lab rm {name}`"
        )
    model = load_model(model_spec, lab=lab, device=device) if isinstance(model_spec, str) \
        else model_spec
    validate_hook(model, hook)
    check_context_size(model, context_size)
    corpus = load_corpus(lab, corpus) if isinstance(corpus, str) else corpus
    lab_model = lab_model_artifact(lab, model_name)
    fingerprint = {**asdict(cfg), "n_tokens": None, "model": model_name, "corpus": corpus.name,
                   "corpus_created": corpus.artifact.created,
                   "model_created": lab_model.created if lab_model else None}

    work = lab.work_dir(name)
    started = time.time()
    with lab.job("cache_activations", name, asdict(cfg), total=n_tokens) as job:
        shards, d_in = _run(model, corpus, cfg, work, fingerprint, job, progress)
        n_stored = sum(s.n for s in shards)
        if n_stored == 0:
            raise InvalidInputError(
                f"split {split!r} of corpus {corpus.name!r} gave no complete context window of "
                f"{context_size} tokens; use a smaller --context-size or a bigger corpus"
            )
    parents = [corpus.name] + ([lab_model.name] if lab_model else [])
    with lab.new_artifact("activations", name, parents, asdict(cfg), overwrite) as art:
        for shard in shards:
            os.replace(work / shard.file, art.path / shard.file)
        art.manifest.update({
            "model": model_name, "hook": hook, "d_in": d_in, "dtype": dtype,
            "n_tokens": n_stored, "context_size": context_size, "corpus": corpus.name,
            "split": split, "shard_tokens": shard_tokens, "packing": packing,
            "bos_excluded": True,
            "shards": [s.to_dict() for s in shards],
        })
        seconds = time.time() - started
        art.metrics.update({
            "n_tokens": n_stored, "corpus_exhausted": n_stored < n_tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(n_stored / max(seconds, 1e-9)),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        })
    shutil.rmtree(work, ignore_errors=True)
    return ActivationStore(lab.get(name, kind="activations"), lab)


def _run(model, corpus: Corpus, cfg: CacheConfig, work: Path, fingerprint: dict, job,
         progress: bool) -> tuple[list[ShardInfo], int]:
    """Fill shards in `work` (resuming from its progress file); return the shards and d_in."""
    shards, d_in = _resume_point(work, fingerprint, cfg)
    done = sum(s.n for s in shards)
    writer: ShardWriter | None = None
    bar = tqdm(total=cfg.n_tokens, initial=done, unit="tok", desc="caching", disable=not progress)
    chunks = iter_activation_chunks(model, cfg.hook, corpus, cfg.split, cfg.context_size,
                                    cfg.model_batch_size, cfg.shuffle_documents, cfg.seed,
                                    skip_tokens=done, packing=cfg.packing)
    try:
        for chunk in chunks if done < cfg.n_tokens else ():
            chunk = chunk.narrow(0, cfg.n_tokens - done)
            if writer is None:
                d_in = chunk.acts.shape[1]
                writer = ShardWriter(work, cfg.shard_tokens, d_in, cfg.dtype, len(shards))
            flushed = writer.add(chunk.acts, chunk.token_ids, chunk.doc_ids, chunk.positions)
            if flushed:
                shards += flushed
                _save_progress(work, fingerprint, shards, d_in)
            done += len(chunk)
            bar.update(len(chunk))
            job.update(done, tokens=done)
            if done >= cfg.n_tokens:
                break
        if writer is not None:
            shards += writer.close()
            _save_progress(work, fingerprint, shards, d_in)
    finally:
        bar.close()
    job.update(done, force=True, tokens=done)
    return shards, d_in


def _resume_point(work: Path, fingerprint: dict, cfg: CacheConfig) -> tuple[list[ShardInfo], int]:
    """Full shards kept from an earlier, interrupted run of the same cache (none if it differs)."""
    file = work / PROGRESS_FILE
    if file.exists():
        state = read_json(file, "activation cache progress")
        if state.get("fingerprint") == fingerprint:
            kept, total = [], 0
            for item in state.get("shards", []):
                shard = ShardInfo(item["file"], int(item["n"]))
                if shard.n != cfg.shard_tokens or total + shard.n > cfg.n_tokens \
                        or not (work / shard.file).exists():
                    break
                kept.append(shard)
                total += shard.n
            if kept:
                return kept, int(state["d_in"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return [], 0


def _save_progress(work: Path, fingerprint: dict, shards: list[ShardInfo], d_in: int) -> None:
    write_json(work / PROGRESS_FILE, {"fingerprint": fingerprint, "d_in": d_in,
                                      "shards": [s.to_dict() for s in shards]})


def _model_name(model_spec) -> str:
    """The name recorded for a model spec (a name/path) or a loaded HookedTransformer."""
    if isinstance(model_spec, str):
        return model_spec
    return str(getattr(model_spec.cfg, "model_name", None) or "model")


def lab_model_artifact(lab: Lab, model_spec: str) -> Artifact | None:
    """The lab model artifact a spec ("lm", "lm@128") names, None for other kinds of spec."""
    try:
        return lab.get(model_spec.partition("@")[0], kind="model")
    except WorkbenchError:
        return None
