"""`workbench sae ...`: train SAEs (one or a sweep from one pass over the data), import sae-lens
SAEs. The evaluation commands (`sae eval`, `sae stats`, ...) come from sae_eval_cmds.py.

    workbench sae train --acts lm-acts --arch topk --latents 4096 --k 32 --tokens 2000000 --name s1
    workbench sae train --live-model lm --hook blocks.1.hook_resid_post --corpus corpus \\
        --arch topafa --latents 4096 --tokens 2000000 --name s2
    workbench sae sweep --acts lm-acts --arch topk,batchtopk --k 8,16,32 --latents 4096
    workbench sae import ./my_sae_folder --name imported --model lm --hook blocks.1.hook_resid_post
    torchrun --nproc_per_node 2 $(which workbench) sae train ...      # data-parallel
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass
from typing import Any

import typer

from workbench.cli.common import echo_json, echo_table, get_lab
from workbench.errors import InvalidInputError

sae_app = typer.Typer(help="Sparse autoencoders: train, sweep, import (and evaluate).",
                      no_args_is_help=True)

RESULT_COLUMNS = ["name", "arch", "d_sae", "train_fvu", "train_l0", "dead_fraction",
                  "tokens_per_s"]


def passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the
    user chose a policy. Only effective before torch is first imported (the CLI imports it
    lazily). On a busy 2-core machine spinning threads made training steps 3-4x slower; on an
    idle one sleeping costs a few microseconds per parallel region."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class _Common:
    """Options shared by `sae train` and `sae sweep` (besides the swept ones)."""

    acts: str | None
    live_model: str | None
    hook: str | None
    corpus: str | None
    context_size: int
    groups: int | None
    group_size: int | None
    tokens: int
    batch_size: int
    lr: float | None
    normalize: str | None
    k_aux: int | None
    dead_window: int | None
    seed: int
    device: str | None
    kernels: str
    threads: int | None

    def config_fields(self) -> dict[str, Any]:
        return {
            "groups": self.groups, "group_size": self.group_size, "tokens": self.tokens,
            "batch_size": self.batch_size, "lr": self.lr, "normalize": self.normalize,
            "k_aux": self.k_aux, "dead_window_tokens": self.dead_window, "seed": self.seed,
            "device": self.device, "kernels": self.kernels,
        }


def _source(lab, opts: _Common):
    """The activation source named on the command line: --acts, or --live-model/--hook/--corpus."""
    from saes.training import live_source

    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    if bool(opts.acts) == bool(opts.live_model):
        raise InvalidInputError(
            "name the activations with --acts NAME, or a live model with --live-model M --hook H "
            "--corpus C (exactly one of the two)"
        )
    if opts.acts:
        return opts.acts
    if not (opts.hook and opts.corpus):
        raise InvalidInputError("--live-model needs --hook and --corpus too")
    return live_source(lab, opts.live_model, opts.hook, opts.corpus, opts.context_size,
                       device=opts.device)


def _train(configs, opts: _Common, overwrite: bool, restart: bool, as_json: bool) -> None:
    from saes.training import train_saes

    lab = get_lab()
    arts = train_saes(lab, configs, _source(lab, opts), overwrite=overwrite, restart=restart,
                      device=opts.device)
    rows = [{"name": a.name, "arch": a.manifest.get("arch"), "d_sae": a.manifest.get("d_sae"),
             **{k: _fmt(v) for k, v in a.metrics.items()}} for a in arts]
    if as_json:
        echo_json([a.to_dict() for a in arts])
    elif rows:
        echo_table(rows, RESULT_COLUMNS)


def _fmt(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def _common(acts, live_model, hook, corpus, context_size, groups, group_size, tokens, batch_size,
            lr, normalize, k_aux, dead_window, seed, device, kernels, threads) -> _Common:
    return _Common(acts, live_model, hook, corpus, context_size, groups, group_size, tokens,
                   batch_size, lr, normalize, k_aux, dead_window, seed, device, kernels, threads)


@sae_app.command("train")
def train(
    name: str = typer.Option(..., "--name", help="Name of the new sae artifact."),
    arch: str = typer.Option("topk", "--arch",
                             help="topk | batchtopk | topafa | structured | relu | jumprelu."),
    latents: int = typer.Option(4096, "--latents", help="Dictionary size (not for structured)."),
    k: int = typer.Option(None, "--k", help="Active latents (topk; mean over batch: batchtopk)."),
    afa_lambda: float = typer.Option(1 / 32, "--afa-lambda", help="top-AFA loss weight."),
    k_groups: int = typer.Option(None, "--k-groups", help="Structured: groups kept per token."),
    sparsity_coef: float = typer.Option(None, "--sparsity-coef",
                                        help="L1 (relu) / L0 (jumprelu) weight."),
    init_from: str = typer.Option(None, "--init-from",
                                  help="Start from this SAE (lab name or sae-lens folder)."),
    acts: str = typer.Option(None, "--acts", help="Activations artifact to train on."),
    live_model: str = typer.Option(None, "--live-model", help="Train from this model live."),
    hook: str = typer.Option(None, "--hook", help="Hook point (with --live-model)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus (with --live-model)."),
    context_size: int = typer.Option(128, "--context-size", help="Live: tokens per window."),
    groups: int = typer.Option(None, "--groups", help="Structured: number of groups G."),
    group_size: int = typer.Option(None, "--group-size", help="Structured: values per group m."),
    tokens: int = typer.Option(2_000_000, "--tokens", help="Training tokens."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Tokens per step (global)."),
    lr: float = typer.Option(None, "--lr", help="Adam lr (default 2e-4*sqrt(16384/latents))."),
    normalize: str = typer.Option(None, "--normalize",
                                  help="none | token | dataset (default: token for topafa)."),
    k_aux: int = typer.Option(None, "--k-aux", help="AuxK latents (default d_in/2)."),
    dead_window: int = typer.Option(None, "--dead-window", help="Dead after this many tokens."),
    seed: int = typer.Option(0, "--seed", help="Init and data-order seed."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: CUDA if any)."),
    kernels: str = typer.Option("auto", "--kernels", help="auto | cpu | sparse_ops."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints; start over."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifact as JSON."),
) -> None:
    """Train one SAE (rerun the same command to resume after an interruption)."""
    passive_openmp()
    from saes.training import SAETrainConfig

    opts = _common(acts, live_model, hook, corpus, context_size, groups, group_size, tokens,
                   batch_size, lr, normalize, k_aux, dead_window, seed, device, kernels, threads)
    cfg = SAETrainConfig(name=name, arch=arch, latents=latents, k=k, afa_lambda=afa_lambda,
                         k_groups=k_groups, sparsity_coefficient=sparsity_coef,
                         init_from=init_from, **opts.config_fields())
    _train([cfg], opts, overwrite, restart, as_json)


@sae_app.command("sweep")
def sweep(
    arch: str = typer.Option("topk", "--arch", help="Comma list of architectures."),
    latents: str = typer.Option("4096", "--latents", help="Comma list of dictionary sizes."),
    k: str = typer.Option(None, "--k", help="Comma list of k (topk, batchtopk)."),
    afa_lambda: str = typer.Option(str(1 / 32), "--afa-lambda", help="Comma list (topafa)."),
    k_groups: str = typer.Option(None, "--k-groups", help="Comma list (structured)."),
    sparsity_coef: str = typer.Option(None, "--sparsity-coef", help="Comma list (relu/jumprelu)."),
    name_prefix: str = typer.Option(None, "--name-prefix",
                                    help="Names are <prefix>-<variant> (default: the acts name)."),
    acts: str = typer.Option(None, "--acts", help="Activations artifact to train on."),
    live_model: str = typer.Option(None, "--live-model", help="Train from this model live."),
    hook: str = typer.Option(None, "--hook", help="Hook point (with --live-model)."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus (with --live-model)."),
    context_size: int = typer.Option(128, "--context-size", help="Live: tokens per window."),
    groups: int = typer.Option(None, "--groups", help="Structured: number of groups G."),
    group_size: int = typer.Option(None, "--group-size", help="Structured: values per group m."),
    tokens: int = typer.Option(2_000_000, "--tokens", help="Training tokens."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Tokens per step (global)."),
    lr: float = typer.Option(None, "--lr", help="Adam lr (default 2e-4*sqrt(16384/latents))."),
    normalize: str = typer.Option(None, "--normalize", help="none | token | dataset."),
    k_aux: int = typer.Option(None, "--k-aux", help="AuxK latents (default d_in/2)."),
    dead_window: int = typer.Option(None, "--dead-window", help="Dead after this many tokens."),
    seed: int = typer.Option(0, "--seed", help="Init and data-order seed."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: CUDA if any)."),
    kernels: str = typer.Option("auto", "--kernels", help="auto | cpu | sparse_ops."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing artifacts."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints; start over."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifacts as JSON."),
) -> None:
    """Train every combination of the comma lists from one pass over the activations."""
    passive_openmp()
    from saes.training import SAETrainConfig

    opts = _common(acts, live_model, hook, corpus, context_size, groups, group_size, tokens,
                   batch_size, lr, normalize, k_aux, dead_window, seed, device, kernels, threads)
    prefix = name_prefix or acts or live_model or "sae"
    configs = []
    for a in _split(arch, str):
        for values in itertools.product(
            _split(latents, int),
            _split(k, int) if a in ("topk", "batchtopk") else [None],
            _split(afa_lambda, float) if a == "topafa" else [1 / 32],
            _split(k_groups, int) if a == "structured" else [None],
            _split(sparsity_coef, float) if a in ("relu", "jumprelu") else [None],
        ):
            n, kk, afa, kg, coef = values
            cfg = SAETrainConfig(name="pending", arch=a, latents=n, k=kk, afa_lambda=afa,
                                 k_groups=kg, sparsity_coefficient=coef, **opts.config_fields())
            cfg.name = f"{prefix}-{cfg.variant_label()}"
            configs.append(cfg)
    if len({c.name for c in configs}) < len(configs):  # structured ignores --latents
        configs = list({c.name: c for c in configs}.values())
    typer.echo(f"sweep: {len(configs)} SAEs from one stream: {', '.join(c.name for c in configs)}")
    _train(configs, opts, overwrite, restart, as_json)


def _split(text: str | None, kind: type) -> list:
    """'8,16,32' -> [8, 16, 32]; None -> [None]."""
    if text is None:
        return [None]
    try:
        return [kind(part) for part in str(text).split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {text!r} as a comma list of {kind.__name__}") from exc


@sae_app.command("import")
def import_command(
    path: str = typer.Argument(..., help="A sae-lens SAE folder (cfg.json + weights)."),
    name: str = typer.Option(..., "--name", help="Name of the new sae artifact."),
    model: str = typer.Option(None, "--model", help="Model the SAE belongs to."),
    hook: str = typer.Option(None, "--hook", help="Hook point it reads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
) -> None:
    """Copy a sae-lens SAE folder into the lab (it is loaded first to validate it)."""
    from saes.interop import import_sae

    art = import_sae(get_lab(), path, name, model=model, hook=hook, overwrite=overwrite)
    m = art.manifest
    typer.echo(f"imported {m['arch']} SAE ({m['d_in']} -> {m['d_sae']}) for "
               f"{m.get('model') or '?'} at {m.get('hook') or '?'} as {art.name}")


def _add_eval_commands() -> None:
    try:
        from workbench.cli import sae_eval_cmds
    except ModuleNotFoundError as exc:
        if exc.name != "workbench.cli.sae_eval_cmds":
            raise
        return
    sae_eval_cmds.add_commands(sae_app)


_add_eval_commands()


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
