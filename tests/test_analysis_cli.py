"""`workbench analyze ...` and `workbench lab build sparsity-law --quick`, in-process."""

from __future__ import annotations

import pandas as pd
import pytest

from app.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_analyze_commands_store_tables(tiny_lab, capsys):
    lab = ("--lab", str(tiny_lab.root))
    code, out, err = run(capsys, *lab, "analyze", "sparsity", "--model", "lm", "--tokens", "1024",
                         "--search-tokens", "1024", "--threshold-tokens", "512", "--no-topk",
                         "--name", "cli-sparsity")
    assert code == 0, err
    assert "activation_ratio" in out and "cli-sparsity" in out
    layers = pd.read_parquet(tiny_lab.get("cli-sparsity").path / "layers.parquet")
    assert list(layers.layer) == [0, 1]
    code, out, err = run(capsys, *lab, "analyze", "attention", "--model", "lm", "--tokens", "512",
                         "--no-whatif", "--name", "cli-attention")
    assert code == 0, err and "pattern_class" in out
    code, out, err = run(capsys, *lab, "analyze", "depth", "--model", "lm", "--tokens", "512",
                         "--fit-tokens", "512", "--name", "cli-depth")
    assert code == 0, err
    code, out, err = run(capsys, *lab, "analyze", "show", "cli-depth", "--table", "angular")
    assert code == 0 and "distance" in out
    manifest = tiny_lab.get("cli-depth", kind="analysis").manifest
    assert manifest["analysis"] == "depth" and "layers" in manifest["tables"]


@pytest.mark.parametrize("args, needle", [
    (("analyze", "sparsity", "--model", "lm", "--p", "0", "--name", "bad-p"), "must lie in"),
    (("analyze", "sparsity", "--model", "no-such-model", "--name", "bad-model"), "no-such-model"),
    (("analyze", "show", "cli-nothing"), "no analysis named"),
])
def test_bad_input_exits_2_with_a_message(tiny_lab, capsys, args, needle):
    code, _, err = run(capsys, "--lab", str(tiny_lab.root), *args)
    assert code == 2 and err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err
    assert not tiny_lab.exists("bad-p") and not tiny_lab.exists("bad-model")


def test_quick_sparsity_law_recipe(tmp_path, capsys):
    """The quick recipe end to end; its corpus and tokenizer are made beforehand from a few
    fortunes (the recipe skips existing artifacts), which is much faster than the corpus build."""
    from fixtures_lab import small_corpus

    from workbench.lab import Lab
    from workbench.models.tokenizer import train_tokenizer_artifact

    lab = Lab(tmp_path / "lab")
    small_corpus(lab, "slq-corpus")
    train_tokenizer_artifact(lab, "slq-corpus", "slq-tok", vocab_size=384)
    code, out, err = run(capsys, "--lab", str(tmp_path / "lab"), "lab", "build", "sparsity-law",
                         "--quick")
    assert code == 0, err
    art = lab.get("sparsity-law-quick", kind="analysis")
    ratios = pd.read_parquet(art.path / "ratios.parquet")
    assert set(ratios.model) == {"slq-relu-L1-d64", "slq-silu-L1-d64", "slq-relu-L2-d32"}
    assert ratios.activation_ratio.between(0, 1).all()
    assert "claim" in out and art.manifest["summary"]["claims"]
