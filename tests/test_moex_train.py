"""MoE-X through the lab's LM trainer: saved and loaded like any model, resumable, upcycled."""

from __future__ import annotations

import pytest
import torch
from moex_fixtures import build_chess_lab, small_cfg, train_cfg

from workbench.errors import InvalidInputError
from workbench.models.architectures import quiet_hooked_transformer
from workbench.models.loading import load_model
from workbench.models.model_io import read_model_folder
from workbench.models.moex import MoEMLP, MoESpec, upcycle_dense
from workbench.models.training import train_lm

SPEC = MoESpec(n_experts=4, k=2, d_expert=32)


@pytest.fixture(scope="module")
def chess_lab(tmp_path_factory):
    return build_chess_lab(tmp_path_factory.mktemp("chess") / "lab")


def test_train_save_load_moex(chess_lab):
    art = train_lm(chess_lab, "mx", "chess", "chess-tok", small_cfg(), train_cfg(),
                   architecture="moex", architecture_options=SPEC.to_options(), progress=False)
    assert art.manifest["architecture"] == "moex"
    assert art.manifest["architecture_options"]["router"] == "sparsity"
    model = load_model("mx", lab=chess_lab)
    assert isinstance(model.blocks[0].mlp, MoEMLP) and model.blocks[0].mlp.spec == SPEC
    assert model.tokenizer.decode(model.to_tokens(";1.e4")[0, 1:]) == ";1.e4"
    tokens = model.to_tokens(";1.e4 e5 2.Nf3")
    again = read_model_folder(art.path, art.manifest)
    torch.testing.assert_close(model(tokens), again(tokens))
    assert 0 < art.metrics["val_loss"] < art.metrics["unigram_val_loss"] + 0.5
    # padding is no target: val tokens are the real characters (+ EOS) of the val games
    assert art.metrics["val_tokens"] < 8 * 63


def test_interrupted_moex_run_resumes_to_the_same_weights(chess_lab):
    full = train_lm(chess_lab, "mx-full", "chess", "chess-tok", small_cfg(), train_cfg(6),
                    architecture="moex", architecture_options=SPEC.to_options(), progress=False)

    def stop(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lm(chess_lab, "mx-cut", "chess", "chess-tok", small_cfg(), train_cfg(6),
                 architecture="moex", architecture_options=SPEC.to_options(), progress=False,
                 callbacks=[stop])
    cut = train_lm(chess_lab, "mx-cut", "chess", "chess-tok", small_cfg(), train_cfg(6),
                   architecture="moex", architecture_options=SPEC.to_options(), progress=False)
    one = load_model("mx-full", lab=chess_lab).state_dict()
    two = load_model("mx-cut", lab=chess_lab).state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], msg=key)
    assert cut.metrics["steps"] == full.metrics["steps"] == 6


def test_upcycled_training_starts_from_the_dense_model(chess_lab):
    dense_art = train_lm(chess_lab, "dense-relu", "chess", "chess-tok", small_cfg(d_mlp=32),
                         train_cfg(2), progress=False)
    dense = load_model("dense-relu", lab=chess_lab)
    tokens = dense.to_tokens(";1.d4 d5 2.c4")
    seen = {}

    def init(model):
        model.load_state_dict(upcycle_dense(dense, SPEC, noise=0.0).state_dict())
        seen["step0"] = model(tokens).detach()

    train_lm(chess_lab, "mx-up", "chess", "chess-tok", small_cfg(d_mlp=32), train_cfg(2),
             architecture="moex",
             architecture_options={**SPEC.to_options(), "upcycled_from": dense_art.name},
             initialize=init, progress=False)
    torch.testing.assert_close(seen["step0"], dense(tokens), atol=1e-5, rtol=1e-4)
    assert load_model("mx-up", lab=chess_lab).blocks[0].mlp.spec == SPEC


def test_unknown_architecture_option_is_a_clear_error(chess_lab):
    with pytest.raises(InvalidInputError, match="unknown MoE options"):
        train_lm(chess_lab, "bad", "chess", "chess-tok", small_cfg(), train_cfg(),
                 architecture="moex", architecture_options={"experts": 4}, progress=False)
    dense = quiet_hooked_transformer(small_cfg())
    assert dense.cfg.d_mlp == 64
