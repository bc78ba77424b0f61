"""Steering-vector artifact: round trips, applying with and without a KV cache, left padding,
Hugging Face forward hooks, and clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fixtures_steering import random_lm_setup

from steering.vectors import ResidualAdder, SteeringVector, measure_resid_norm
from workbench.errors import InvalidInputError, NotFoundError

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def steer_setup(tmp_path_factory):
    return random_lm_setup(tmp_path_factory.mktemp("steer") / "lab")


def _vector(d_model=128, hook=HOOK, seed=0, strength=6.0):
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector.from_tensor(torch.randn(d_model, generator=gen), hook, "lm",
                                      resid_norm=3.5, strength=strength, language="de",
                                      method="diffmean", provenance={"test": True})


def test_round_trip_pair_and_lab(tmp_path, steer_setup):
    lab, _, _ = steer_setup
    vec = _vector()
    vec.features = [{"source": "sae-x", "index": 7, "weight": 0.5}]
    tensors, sidecar = vec.save(tmp_path / "v.safetensors")
    assert tensors.name == "v.safetensors" and sidecar.name == "v.json"
    meta = json.loads(sidecar.read_text())
    assert meta["hooks"] == [HOOK] and meta["layers"] == [1] and meta["d_model"] == 128
    assert meta["resid_norm"] == {HOOK: 3.5} and meta["strength"] == 6.0
    for source in (tmp_path / "v", tensors, sidecar):
        back = SteeringVector.load(source)
        assert torch.equal(back.directions[HOOK], vec.directions[HOOK])
        assert back.sidecar() == vec.sidecar()
    assert abs(float(vec.directions[HOOK].norm()) - 1) < 1e-6
    art = vec.save_to_lab(lab, "vec-roundtrip")
    assert art.kind == "steering" and art.manifest["hooks"] == [HOOK]
    back = SteeringVector.from_lab(lab, "vec-roundtrip")
    assert back.sidecar() == vec.sidecar()
    assert torch.allclose(back.delta(HOOK, 2.0), 2.0 * 3.5 * vec.directions[HOOK])


def test_from_feature_uses_decoder_row():
    class Meta:
        hook_name, model_name = HOOK, "lm"

        def get(self, key, default=None):
            return default

    class Cfg:
        metadata = Meta()

    class FakeSAE:
        W_dec = torch.randn(16, 128)
        cfg = Cfg()

    vec = SteeringVector.from_feature(FakeSAE(), 3, resid_norm=2.0, source="my-sae")
    assert torch.allclose(vec.directions[HOOK], FakeSAE.W_dec[3] / FakeSAE.W_dec[3].norm())
    assert vec.features == [{"source": "my-sae", "index": 3, "weight": 1.0}]
    with pytest.raises(InvalidInputError, match="out of range"):
        SteeringVector.from_feature(FakeSAE(), 16, resid_norm=2.0)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_kv_cache_and_no_cache_give_the_same_steered_tokens(steer_setup, positions):
    _, _, model = steer_setup
    vec = _vector(strength=8.0)
    prompt = model.to_tokens("Das ist ein kleiner Test")
    outs = {}
    for cache in (True, False):
        with vec.apply(model, positions=positions):
            outs[cache] = model.generate(prompt, max_new_tokens=12, do_sample=False,
                                         use_past_kv_cache=cache, verbose=False, stop_at_eos=False)
    assert torch.equal(outs[True], outs[False])
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False,
                           stop_at_eos=False)
    if positions != "prompt":  # the prompt's steering reaches later tokens only through attention
        assert not torch.equal(plain, outs[True]), "steering changed nothing"


def test_adder_steers_exactly_the_chosen_positions():
    delta = torch.ones(4)
    for cache in (True, False):
        adder = ResidualAdder(delta, "generated")
        seen = []
        prompt_width, total = 3, 6
        lengths = [3, 1, 1, 1] if cache else [3, 4, 5, 6]
        for length in lengths:
            out = adder(torch.zeros(2, length, 4))
            seen.append(out[0, :, 0].tolist())
        # the steered positions are >= the prompt width in both modes
        last = seen[-1] if not cache else [x for part in seen for x in part]
        assert last == [0.0] * prompt_width + [1.0] * (total - prompt_width)
    adder = ResidualAdder(delta, "prompt")
    assert adder(torch.zeros(1, 3, 4))[0, :, 0].tolist() == [1.0, 1.0, 1.0]
    assert adder(torch.zeros(1, 1, 4))[0, :, 0].tolist() == [0.0]


def test_left_padded_batch_matches_single_prompts(steer_setup):
    _, _, model = steer_setup
    vec = _vector(strength=8.0)
    prompts = ["Ein Test", "Dies ist ein viel längerer Satz zum Testen"]
    kwargs = {"max_new_tokens": 8, "do_sample": False, "verbose": False, "stop_at_eos": False,
              "return_type": "tokens"}
    for positions in ("all", "generated"):
        with vec.apply(model, positions=positions):
            batch = model.generate(prompts, **kwargs)
        for row, prompt in enumerate(prompts):
            with vec.apply(model, positions=positions):
                single = model.generate(model.to_tokens(prompt), **kwargs)
            assert batch[row, -8:].tolist() == single[0, -8:].tolist(), (positions, row)


def test_hf_forward_hook_matches_adding_the_delta():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=100,
                                    n_positions=64)).eval()
    vec = SteeringVector.from_tensor(torch.randn(64), "blocks.1.hook_resid_post", "gpt2-tiny",
                                     resid_norm=2.0, strength=3.0)
    ids = torch.randint(0, 100, (2, 7))
    seen = []  # what layers 1 and 2 receive: the outputs of layers 0 and 1
    grab = [hf.transformer.h[i].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(
            (kwargs.get("hidden_states", args[0] if args else None)).clone()), with_kwargs=True)
        for i in (1, 2)]
    with torch.no_grad():
        hf(ids)
        with vec.apply_hf(hf):
            hf(ids)
        for handle in grab:
            handle.remove()
        plain, steered = seen[:2], seen[2:]
        assert torch.allclose(steered[1], plain[1] + vec.delta("blocks.1.hook_resid_post"), atol=1e-5)
        assert torch.allclose(steered[0], plain[0])
        outs = {}
        for cache in (True, False):
            with vec.apply_hf(hf, positions="generated"):
                outs[cache] = hf.generate(ids[:1], max_new_tokens=6, do_sample=False,
                                          use_cache=cache, pad_token_id=0)
        assert torch.equal(outs[True], outs[False])
    with pytest.raises(InvalidInputError, match="hidden size"), _vector(d_model=32).apply_hf(hf):
        pass
    deep = SteeringVector.from_tensor(torch.randn(64), "blocks.5.hook_resid_post", "m",
                                      resid_norm=1.0)
    with pytest.raises(NotFoundError, match="decoder layers"), deep.apply_hf(hf):
        pass


def test_resid_norm_is_the_mean_norm(steer_setup):
    _, _, model = steer_setup
    tokens = model.to_tokens(["Hallo Welt und mehr", "Noch ein Satz hier"])
    norms = measure_resid_norm(model, [HOOK], tokens)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    assert math.isclose(norms[HOOK], float(cache[HOOK][:, 1:].norm(dim=-1).mean()), rel_tol=1e-5)


def test_bad_input_gives_clear_errors_and_writes_nothing(tmp_path, steer_setup):
    lab, _, model = steer_setup
    with pytest.raises(InvalidInputError, match="finite"):
        _vector(strength=float("nan"))
    vec = _vector()
    with pytest.raises(InvalidInputError, match="finite"):
        vec.delta(HOOK, float("nan"))
    with pytest.raises(InvalidInputError, match="finite"), vec.apply(model, strength=float("nan")):
        pass
    with pytest.raises(NotFoundError, match="has no hook"), \
            _vector(hook="blocks.7.hook_resid_post").apply(model):
        pass
    with pytest.raises(InvalidInputError, match="d_model=64"), _vector(d_model=64).apply(model):
        pass
    with pytest.raises(InvalidInputError, match="unknown positions"):
        vec.tl_hooks(positions="middle")
    with pytest.raises(InvalidInputError, match="all zeros"):
        SteeringVector.from_tensor(torch.zeros(128), HOOK, "lm", resid_norm=1.0)
    with pytest.raises(NotFoundError, match="no steering vector file"):
        SteeringVector.load(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    vec.save(tmp_path / "bad")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        SteeringVector.load(tmp_path / "bad")
    assert not lab.exists("never-written")


def test_lm_trainer_fixes_the_unembedding_bias_at_zero(steer_setup):
    from workbench.models.loading import load_model
    from workbench.models.presets import lm_config
    from workbench.models.training import LMTrainConfig, train_lm

    lab, _, model = steer_setup
    small = LMTrainConfig(steps=2, batch_size=2, warmup_steps=1, eval_every=2, eval_sequences=2,
                          final_eval_sequences=2, save_every=2)
    cfg = lm_config("tiny", d_vocab=model.cfg.d_vocab, n_ctx=32)
    train_lm(lab, "lm-nobias", "corpus", "tok", cfg, small, progress=False)
    assert torch.count_nonzero(load_model("lm-nobias", lab=lab).unembed.b_U) == 0
    small.unembed_bias = True
    train_lm(lab, "lm-bias", "corpus", "tok", cfg, small, progress=False)
    assert torch.count_nonzero(load_model("lm-bias", lab=lab).unembed.b_U) > 0
