"""Activation caching and reading: shards equal to run_with_cache, index, resume, shuffling."""

from __future__ import annotations

import pytest
import torch
from fixtures_lab import small_lm_setup

from workbench.activations import cache as cache_module
from workbench.activations import (
    cache_activations,
    collect_activations,
    iter_live_batches,
    open_activations,
)
from workbench.activations.batching import prefetched, shuffled_batches
from workbench.activations.live import iter_documents
from workbench.activations.windows import iter_window_batches
from workbench.errors import InvalidInputError, NotFoundError

HOOK = "blocks.0.hook_resid_post"
CTX = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(lab, corpus, model): fortunes corpus, BPE tokenizer, random-init tiny LM (n_ctx 64)."""
    return small_lm_setup(tmp_path_factory.mktemp("acts-lab"))


@pytest.fixture(scope="module")
def store(setup):
    lab, corpus, model = setup
    return cache_activations(lab, "acts", model, HOOK, corpus, n_tokens=2500, context_size=CTX,
                             shard_tokens=700, model_batch_size=8, progress=False)


def _reference(model, corpus, n_tokens, hook=HOOK, model_batch_size=8):
    """Activations at `hook` from full forward passes (no early stop) over the same windows."""
    acts, tokens, docs, positions = [], [], [], []
    documents = iter_documents(corpus, "train", shuffle=True, seed=0)
    for windows in iter_window_batches(model.tokenizer, documents, CTX, model_batch_size):
        _, cache = model.run_with_cache(windows.tokens)
        keep = windows.is_text
        acts.append(cache[hook][keep].reshape(int(keep.sum()), -1))
        tokens.append(windows.tokens[keep])
        docs.append(windows.doc_ids[keep])
        positions.append(windows.positions[keep])
        if sum(len(a) for a in acts) >= n_tokens:
            break
    return [torch.cat(x)[:n_tokens] for x in (acts, tokens, docs, positions)]


def test_cache_equals_run_with_cache_and_index_is_consistent(setup, store):
    _, corpus, model = setup
    ref_acts, ref_tokens, ref_docs, ref_pos = _reference(model, corpus, 2500)
    assert store.n_tokens == 2500 and store.d_in == model.cfg.d_model
    assert [n for _, n in store.shards] == [700, 700, 700, 400]
    assert torch.allclose(store.read(), ref_acts, atol=1e-5)
    index = store.read_index()
    assert torch.equal(index["token_ids"].long(), ref_tokens)
    assert torch.equal(index["doc_ids"], ref_docs)
    assert torch.equal(index["positions"].long(), ref_pos.long())
    # every stored token is the token at that position of that document
    texts = corpus.frame("train").set_index("doc_id").text
    for doc in torch.unique(index["doc_ids"])[:20].tolist():
        rows = index["doc_ids"] == doc
        ids = model.tokenizer(texts[doc], add_special_tokens=False)["input_ids"]
        positions = index["positions"][rows].tolist()
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert index["token_ids"][rows].tolist() == [ids[p] for p in positions]
    bos = model.tokenizer.bos_token_id
    assert not (index["token_ids"] == bos).any(), "BOS positions must not be stored"
    assert torch.allclose(store.read(650, 1450), ref_acts[650:1450], atol=1e-5)


def test_manifest_metrics_and_languages(setup, store):
    lab, corpus, _ = setup
    m = store.artifact.manifest
    assert (m["model"], m["hook"], m["dtype"], m["corpus"], m["split"]) == \
        ("workbench-tiny", HOOK, "float32", corpus.name, "train")
    assert 0 < store.artifact.metrics["peak_rss_mb"] < 3000
    langs = store.token_labels("language")
    by_doc = corpus.frame("train").set_index("doc_id").language
    assert list(langs) == by_doc.reindex(store.read_index()["doc_ids"].numpy()).tolist()
    assert len(set(langs)) == 3, "documents are shuffled, so a prefix mixes all languages"
    assert not (lab.root / "work" / "acts").exists()


def test_shuffled_reader_covers_every_token_once(store):
    full = store.read()
    key = torch.randn(store.d_in, dtype=torch.float64)

    def canonical(rows):
        return rows[torch.argsort(rows.double() @ key)]

    batches = list(store.iter_batches(256, seed=1, drop_last=False, buffer_shards=2))
    got = torch.cat(batches)
    assert all(b.shape == (256, store.d_in) and b.dtype == torch.float32 for b in batches[:-1])
    assert torch.equal(canonical(got), canonical(full))
    assert not torch.equal(got, full), "rows must be shuffled"
    again = torch.cat(list(store.iter_batches(256, seed=1, drop_last=False, buffer_shards=2)))
    other = torch.cat(list(store.iter_batches(256, seed=2, drop_last=False, buffer_shards=2)))
    assert torch.equal(got, again) and not torch.equal(got, other)
    ordered = torch.cat(list(store.iter_batches(256, shuffle=False, drop_last=False)))
    assert torch.equal(ordered, full)
    assert sum(len(b) for b in store.iter_batches(256)) == 2500 // 256 * 256
    assert sum(len(b) for b in store.iter_batches(100, epochs=None, max_tokens=6000)) == 6000


def test_shuffle_buffer_stays_bounded():
    consumed = emitted = peak = 0

    def chunks():
        nonlocal consumed
        for i in range(40):
            consumed += 50
            yield torch.full((50, 2), float(i))

    for batch in shuffled_batches(chunks(), 32, capacity=200, generator=torch.Generator()):
        emitted += len(batch)
        peak = max(peak, consumed - emitted)
    assert emitted == 2000 // 32 * 32
    assert peak <= 200 + 50


def test_dtype_and_width_options(setup):
    lab, corpus, model = setup
    half = cache_activations(lab, "acts-z", model, "blocks.0.attn.hook_z", corpus, n_tokens=300,
                             context_size=CTX, dtype="float16", progress=False)
    assert half.d_in == model.cfg.n_heads * model.cfg.d_head and half.dtype == "float16"
    assert half._read_range("acts", 0, 10).dtype == torch.float16
    ref = _reference(model, corpus, 300, hook="blocks.0.attn.hook_z")[0]
    assert torch.allclose(half.read(), ref, atol=2e-2, rtol=1e-2)
    mlp = cache_activations(lab, "acts-mlp", model, "blocks.0.mlp.hook_post", corpus,
                            n_tokens=100, context_size=CTX, dtype="bfloat16", progress=False)
    assert mlp.d_in == model.cfg.d_mlp and mlp.read().shape == (100, model.cfg.d_mlp)
    with pytest.raises(InvalidInputError, match="float16"):
        cache_activations(lab, "bad", model, HOOK, corpus, n_tokens=10, dtype="int8")
    with pytest.raises(InvalidInputError, match="per-token"):
        cache_activations(lab, "bad", model, "blocks.0.attn.hook_pattern", corpus, n_tokens=10,
                          context_size=CTX, progress=False)


def test_unknown_hook_lists_valid_hooks(setup):
    lab, corpus, model = setup
    with pytest.raises(NotFoundError) as err:
        cache_activations(lab, "bad", model, "blocks.7.hook_resid_post", corpus, n_tokens=10)
    assert "blocks.{0..1}.hook_resid_post" in str(err.value) and "blocks.7" in str(err.value)
    assert not lab.exists("bad")


def test_later_layers_are_not_computed(setup):
    _, corpus, model = setup
    calls = []
    handle = model.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        collect_activations(model, HOOK, corpus, 100, context_size=CTX)
    finally:
        handle.remove()
    assert calls == []


def test_failed_cache_leaves_no_artifact_then_resumes(setup, store, monkeypatch):
    lab, corpus, model = setup
    real = cache_module.iter_activation_chunks
    skipped = []

    def failing(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 8:
                raise RuntimeError("killed")
            yield chunk

    monkeypatch.setattr(cache_module, "iter_activation_chunks", failing)
    with pytest.raises(RuntimeError, match="killed"):
        cache_activations(lab, "resumed", model, HOOK, corpus, n_tokens=2500, context_size=CTX,
                          shard_tokens=700, model_batch_size=8, progress=False)
    assert not lab.exists("resumed")
    assert lab.jobs("resumed")[0]["status"] == "failed"
    assert (lab.root / "work" / "resumed" / "shard_00000.safetensors").exists()

    def recording(*args, **kwargs):
        skipped.append(kwargs["skip_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "iter_activation_chunks", recording)
    resumed = cache_activations(lab, "resumed", model, HOOK, corpus, n_tokens=2500,
                                context_size=CTX, shard_tokens=700, model_batch_size=8,
                                progress=False)
    assert skipped and skipped[0] >= 700, "finished shards must be kept"
    assert torch.equal(resumed.read(), store.read())
    assert torch.equal(resumed.read_index()["doc_ids"], store.read_index()["doc_ids"])
    with pytest.raises(InvalidInputError, match="already exists"):
        cache_activations(lab, "resumed", model, HOOK, corpus, n_tokens=10)


def test_live_batches_match_the_cache(setup, store):
    _, corpus, model = setup
    live = torch.cat(list(iter_live_batches(model, HOOK, corpus, 100, context_size=CTX,
                                            shuffle=False, model_batch_size=8, max_tokens=2500,
                                            device="cpu")))
    assert torch.allclose(live, store.read(), atol=1e-5)
    shuffled = list(iter_live_batches(model, HOOK, corpus, 64, context_size=CTX, seed=3,
                                      max_tokens=640, model_batch_size=8, device="cpu"))
    assert [b.shape for b in shuffled] == [(64, model.cfg.d_model)] * 10
    assert not torch.allclose(torch.cat(shuffled), store.read(0, 640))


def test_store_errors(setup, store):
    lab, corpus, model = setup
    with pytest.raises(InvalidInputError, match="outside"):
        store.read(0, 10**6)
    with pytest.raises(InvalidInputError, match="no column"):
        store.token_labels("colour")
    with pytest.raises(InvalidInputError, match="longer than the model"):
        cache_activations(lab, "bad", model, HOOK, corpus, n_tokens=10, context_size=1000)
    with pytest.raises(NotFoundError, match="no activations named"):
        open_activations(lab, "nope")
    shard = store.shards[0][0]
    data = shard.read_bytes()
    try:
        shard.write_bytes(b"garbage")
        with pytest.raises(InvalidInputError, match="unreadable"):
            store.read(0, 10)
    finally:
        shard.write_bytes(data)


def test_cli_cache_and_show(setup, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    lab, _, _ = setup
    monkeypatch.setenv("WORKBENCH_LAB", str(lab.root))
    args = ["acts", "cache", "--model", "lm", "--hook", "blocks.1.hook_resid_post", "--corpus",
            "corpus", "--tokens", "300", "--context-size", "32", "--dtype", "float16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "peak RSS" in result.output
    store = open_activations(lab, "lm-blocks.1.hook_resid_post-acts")
    assert (store.n_tokens, store.dtype, store.model_name) == (300, "float16", "lm")
    assert store.artifact.parents == ["corpus", "lm"]
    shown = CliRunner().invoke(app, ["acts", "show", store.name, "--head", "3"])
    assert shown.exit_code == 0 and "doc_id" in shown.output and "n_tokens: 300" in shown.output
    bad = CliRunner().invoke(app, [*args[:5], "blocks.9.hook_nope", *args[6:], "--name", "x"])
    assert bad.exit_code != 0 and "Valid hooks" in str(bad.exception)


class _DigitTokenizer:
    """Token ids are the numbers in the text; BOS 0, EOS 99, PAD 98."""

    bos_token_id, eos_token_id, pad_token_id = 0, 99, 98

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(t) for t in text.split()] for text in texts]}


def test_window_packings():
    docs = [(10, "1 2 3"), (11, ""), (12, "4 5 6 7 8 9 10"), (13, "11 12")]
    concat = list(iter_window_batches(_DigitTokenizer(), docs, 4, 2, "concat", tokenize_chunk=2))
    assert [b.tokens.tolist() for b in concat] == [
        [[0, 1, 2, 3], [0, 99, 0, 4]], [[0, 5, 6, 7], [0, 8, 9, 10]], [[0, 99, 0, 11]]]
    assert concat[0].doc_ids.tolist() == [[-1, 10, 10, 10], [-1, -1, -1, 12]]
    assert concat[1].positions.tolist() == [[-1, 1, 2, 3], [-1, 4, 5, 6]]
    per_doc = list(iter_window_batches(_DigitTokenizer(), docs, 4, 2, "document"))
    assert [b.tokens.tolist() for b in per_doc] == [
        [[0, 1, 2, 3], [0, 4, 5, 6]], [[0, 7, 8, 9], [0, 10, 99, 98]], [[0, 11, 12, 99]]]
    assert per_doc[1].doc_ids.tolist() == [[-1, 12, 12, 12], [-1, 12, -1, -1]]
    assert per_doc[1].positions.tolist() == [[-1, 3, 4, 5], [-1, 6, -1, -1]]
    with pytest.raises(InvalidInputError, match="packing"):
        next(iter_window_batches(_DigitTokenizer(), docs, 4, 2, "mixed"))


def test_document_packing_reads_each_document_alone(setup):
    lab, corpus, model = setup
    store = cache_activations(lab, "acts-doc", model, HOOK, corpus, n_tokens=600,
                              context_size=CTX, packing="document", progress=False)
    assert store.packing == "document"
    index, acts = store.read_index(), store.read()
    texts = corpus.frame("train").set_index("doc_id").text
    bos = model.tokenizer.bos_token_id
    for doc in torch.unique(index["doc_ids"])[:8].tolist():
        rows = (index["doc_ids"] == doc) & (index["positions"] < CTX - 1)
        assert index["positions"][rows].tolist() == list(range(int(rows.sum())))
        ids = model.tokenizer(texts[doc], add_special_tokens=False)["input_ids"][:CTX - 1]
        _, cache = model.run_with_cache(torch.tensor([[bos, *ids]]))
        assert torch.allclose(acts[rows], cache[HOOK][0, 1:1 + int(rows.sum())], atol=1e-5)


def test_prefetched_keeps_order_raises_errors_and_stops_its_producer():
    import threading

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad batch")

    stream = prefetched(failing())
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(stream)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5 + 2 + 2  # at most depth (+ one in hand) ahead
