"""`workbench lm ...`: tokenizers, language-model training, generation, presets, hooks and
export to Hugging Face transformers."""

from __future__ import annotations

import typer

from app.cli.common import echo_json, echo_table, get_lab
from workbench.models.train_config import LMTrainConfig

_DEFAULTS = LMTrainConfig()

lm_app = typer.Typer(help="Tokenizers and language models: train, sample, inspect.",
                     no_args_is_help=True)


@lm_app.command("tokenizer")
def tokenizer_cmd(
    corpus: str = typer.Option(..., help="Corpus artifact to train on (its train split)."),
    name: str = typer.Option(..., help="Name of the tokenizer artifact."),
    vocab: int = typer.Option(4096, help="Vocabulary size (byte-level BPE)."),
    overwrite: bool = typer.Option(False, help="Replace an existing artifact of that name."),
) -> None:
    """Train a byte-level BPE tokenizer on a corpus."""
    from workbench.models.tokenizer import train_tokenizer_artifact

    art = train_tokenizer_artifact(get_lab(), corpus, name, vocab_size=vocab, overwrite=overwrite)
    typer.echo(f"tokenizer {art.name}: {art.metrics.get('vocab_size')} tokens, "
               f"{art.metrics.get('chars_per_token', '?')} characters per token")


@lm_app.command("train")
def train_cmd(
    corpus: str = typer.Option(..., help="Corpus artifact to train on."),
    name: str = typer.Option(..., help="Name of the model artifact."),
    tokenizer: str = typer.Option(
        None, help="Tokenizer artifact. Default: '<corpus>-tok' (or '<corpus>-tok<VOCAB>' for a "
        "non-default --vocab), trained from the corpus if it does not exist yet."),
    vocab: int = typer.Option(4096, help="Vocabulary size when the tokenizer is trained here."),
    preset: str = typer.Option("tiny", help="Model preset (see `workbench lm list-presets`)."),
    act_fn: str = typer.Option("gelu", help="MLP activation: gelu, relu or silu."),
    gated: bool = typer.Option(False, help="Gated MLP: W_out (act(W_gate x) * W_in x)."),
    kv_heads: int = typer.Option(None, help="Key/value heads for grouped-query attention."),
    norm: str = typer.Option("LN", help="Normalization: LN or RMS."),
    positional: str = typer.Option("standard", help="Positions: standard or rotary."),
    n_ctx: int = typer.Option(128, help="Context length in tokens."),
    d_mlp: int = typer.Option(None, help="Override the preset's MLP width."),
    steps: int = typer.Option(_DEFAULTS.steps, help="Optimizer steps."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, help="Sequences per step."),
    lr: float = typer.Option(_DEFAULTS.lr, help="Peak learning rate."),
    warmup: int = typer.Option(_DEFAULTS.warmup_steps, help="Warm-up steps."),
    seed: int = typer.Option(0, help="Seed for initialization and data order."),
    checkpoints: str = typer.Option(
        None, help="Weights to keep along training: 'geometric', 'geometric:1.5', 'every:N' or "
        "a list like '1,2,5'."),
    eval_every: int = typer.Option(_DEFAULTS.eval_every, help="Steps between validation losses."),
    save_every: int = typer.Option(_DEFAULTS.save_every, help="Steps between resumable states."),
    precision: str = typer.Option(_DEFAULTS.precision, help="auto, fp32 or bf16 (autocast)."),
    device: str = typer.Option(None, help="Device (default: CUDA if present, else CPU)."),
    overwrite: bool = typer.Option(False, help="Replace an existing model of that name."),
    restart: bool = typer.Option(False, help="Discard an interrupted run instead of resuming."),
) -> None:
    """Train a language model; rerunning the same command resumes an interrupted run."""
    from workbench.models.presets import lm_config
    from workbench.models.tokenizer import load_tokenizer
    from workbench.models.training import train_lm

    lab = get_lab()
    tok_name = tokenizer or _default_tokenizer(lab, corpus, vocab)
    tok = load_tokenizer(lab, tok_name)
    model_cfg = lm_config(preset, d_vocab=len(tok), n_ctx=n_ctx, act_fn=act_fn, gated=gated,
                          n_key_value_heads=kv_heads, normalization=norm, positional=positional,
                          d_mlp=d_mlp, seed=seed)
    train_cfg = LMTrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, seed=seed,
        checkpoints=checkpoints, eval_every=eval_every, save_every=save_every, precision=precision,
    )
    art = train_lm(lab, name, corpus, tok_name, model_cfg, train_cfg, device=device,
                   overwrite=overwrite, restart=restart)
    m = art.metrics
    typer.echo(
        f"model {art.name}: val loss {m['val_loss']:.3f} (unigram baseline "
        f"{m['unigram_val_loss']:.3f}), train loss {m['train_loss']:.3f}, {m['steps']} steps, "
        f"{m['tokens_per_s']:.0f} tokens/s, {m['train_time_s']:.0f} s"
    )


def _default_tokenizer(lab, corpus: str, vocab: int) -> str:
    """`<corpus>-tok[<vocab>]`: reused when it exists (same corpus and size), else trained."""
    from workbench.errors import InvalidInputError
    from workbench.models.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer_artifact

    name = f"{corpus}-tok" if vocab == DEFAULT_VOCAB_SIZE else f"{corpus}-tok{vocab}"
    if not lab.exists(name):
        typer.echo(f"training tokenizer {name} on {corpus} (vocabulary {vocab})")
        train_tokenizer_artifact(lab, corpus, name, vocab_size=vocab)
        return name
    art = lab.get(name, kind="tokenizer")
    if art.parents != [corpus] or art.config.get("vocab_size") != vocab:
        raise InvalidInputError(
            f"tokenizer {name!r} exists but was not trained on {corpus!r} with vocabulary "
            f"{vocab}; pass --tokenizer explicitly"
        )
    return name


@lm_app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., help="Lab model, TransformerLens name or local HF folder."),
    prompt: str = typer.Option("", help="Text to continue."),
    max_new_tokens: int = typer.Option(40, help="Tokens to sample."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0 = greedy)."),
    top_k: int = typer.Option(50, help="Sample among the k most likely tokens."),
    seed: int = typer.Option(0, help="Sampling seed."),
    samples: int = typer.Option(1, help="Number of continuations."),
    device: str = typer.Option(None, help="Device."),
) -> None:
    """Sample continuations of a prompt."""
    from workbench.models.generation import generate_text
    from workbench.models.loading import load_model

    lm = load_model(model, lab=get_lab(), device=device)
    for i in range(samples):
        typer.echo(generate_text(lm, prompt, max_new_tokens, temperature, top_k, seed + i))


@lm_app.command("list-presets")
def list_presets_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the model presets and the options every preset takes."""
    from workbench.models.presets import ACT_FNS, NORMALIZATIONS, POSITIONAL, list_presets

    rows = list_presets()
    if as_json:
        echo_json({"presets": rows, "act_fn": ACT_FNS, "norm": NORMALIZATIONS,
                   "positional": POSITIONAL})
        return
    echo_table(rows, ["name", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "description"])
    typer.echo(f"options: --act-fn {'|'.join(ACT_FNS)}  --gated  --kv-heads N  "
               f"--norm {'|'.join(NORMALIZATIONS)}  --positional {'|'.join(POSITIONAL)}")


@lm_app.command("hooks")
def hooks_cmd(
    model: str = typer.Option(..., help="Lab model, TransformerLens name or local HF folder."),
) -> None:
    """List a model's hook points (layer numbers folded into ranges)."""
    from workbench.models.hooks import hook_patterns
    from workbench.models.loading import load_model

    for pattern in hook_patterns(load_model(model, lab=get_lab())):
        typer.echo(pattern)


@lm_app.command("export-hf")
def export_hf_cmd(
    name: str = typer.Argument(..., help="Lab model (or NAME@STEP for a kept checkpoint)."),
    out: str = typer.Option(..., help="Folder to write (a transformers save_pretrained folder)."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export a lab model as a Hugging Face transformers model (GPT-2 or Llama layout) with its
    tokenizer; checks that the written model's logits equal the lab model's."""
    from workbench.models.export_hf import export_lab_model_hf

    report = export_lab_model_hf(get_lab(), name, out, overwrite=overwrite)
    if as_json:
        echo_json(report.to_dict())
        return
    typer.echo(f"wrote {report.architecture} ({report.style} style, {report.n_params} "
               f"parameters) to {report.out_dir}; max |logit difference| against the lab "
               f"model: {report.max_abs_logit_diff:.2g}")


@lm_app.command("export-gguf")
def export_gguf_cmd(
    hf_dir: str = typer.Argument(..., help="Folder written by `workbench lm export-hf`."),
    out: str = typer.Option(..., help="GGUF file to write."),
    llama_cpp: str = typer.Option(None, "--llama-cpp", envvar="LLAMA_CPP_DIR",
                                  help="llama.cpp source tree (has convert_hf_to_gguf.py)."),
    outtype: str = typer.Option("f32", help="Weight type: f32, f16, bf16 or q8_0."),
    overwrite: bool = typer.Option(False, help="Replace an existing file."),
) -> None:
    """Convert an exported model to a llama.cpp GGUF with llama.cpp's own converter."""
    from workbench.models.llamacpp import convert_to_gguf

    path = convert_to_gguf(hf_dir, out, llama_cpp, outtype=outtype, overwrite=overwrite)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(lm_app, name="lm")
