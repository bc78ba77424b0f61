"""`workbench sae ...`: train SAEs (one or a sweep from one pass over the data), import sae-lens
SAEs. The evaluation commands (`sae eval`, `sae stats`, ...) come from sae_eval_cmds.py.

    workbench sae train --acts lm-acts --arch topk --latents 4096 --k 32 --tokens 2000000 --name s1
    workbench sae train --live-model lm --hook blocks.1.hook_resid_post --corpus corpus \\
        --arch topafa --latents 4096 --tokens 2000000 --name s2
    workbench sae sweep --acts lm-acts --arch topk,batchtopk --k 8,16,32 --latents 4096
    workbench sae import ./my_sae_folder --name imported --model lm --hook blocks.1.hook_resid_post
    workbench sae choices        # the architectures, normalizations and kernel backends
    torchrun --nproc_per_node 2 $(which workbench) sae train ...      # data-parallel
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import typer

from app.cli.common import echo_json, echo_table, get_lab
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


def _option(name: str, kind: type, default: Any, help_text: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                             default=typer.Option(default, flag, help=help_text))


SOURCE_OPTIONS = [
    _option("acts", str, None, "Activations artifact to train on."),
    _option("live_model", str, None, "Train from this model live."),
    _option("hook", str, None, "Hook point (with --live-model)."),
    _option("corpus", str, None, "Corpus (with --live-model)."),
    _option("context_size", int, 128, "Live: tokens per window."),
    _option("groups", int, None, "Structured: number of groups G."),
    _option("group_size", int, None, "Structured: values per group m."),
    _option("tokens", int, 2_000_000, "Training tokens."),
    _option("batch_size", int, 4096, "Tokens per step (global)."),
    _option("lr", float, None, "Adam lr (default 1e-3*sqrt(16384/latents))."),
    _option("normalize", str, None,
            "Input normalization (`sae choices` lists them; default: token for topafa, else "
            "dataset)."),
    _option("k_aux", int, None, "AuxK latents (default d_in/2)."),
    _option("dead_window", int, None, "Dead after this many tokens."),
    _option("seed", int, 0, "Init and data-order seed."),
    _option("device", str, None, "cpu, cuda, ... (default: CUDA if any)."),
    _option("kernels", str, "auto",
            "sparse_ops backend of the sparse encode/decode (`sae choices` lists them)."),
    _option("threads", int, None, "torch CPU threads."),
]
"""The options `sae train` and `sae sweep` share (fields of _Common, in that order)."""


def with_source_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(..., opts: _Common)` the SOURCE_OPTIONS as command-line options: they are
    appended to its signature (before its own last three: --overwrite, --restart, --json) and
    handed to it packed in `opts`. OpenMP is made passive before the command imports torch."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "opts"]
    names = [p.name for p in SOURCE_OPTIONS]

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        passive_openmp()
        opts = _Common(**{name: kwargs.pop(name) for name in names})
        command(opts=opts, **kwargs)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    run.__signature__ = inspect.Signature(params[:-3] + SOURCE_OPTIONS + params[-3:])  # type: ignore[attr-defined]
    return run


@sae_app.command("train")
@with_source_options
def train(
    name: str = typer.Option(..., "--name", help="Name of the new sae artifact."),
    arch: str = typer.Option("topk", "--arch",
                             help="SAE architecture (`workbench sae choices` lists them)."),
    latents: int = typer.Option(4096, "--latents", help="Dictionary size (not for structured)."),
    k: int = typer.Option(None, "--k", help="Active latents (topk; mean over batch: batchtopk)."),
    afa_lambda: float = typer.Option(1 / 32, "--afa-lambda", help="top-AFA loss weight."),
    k_groups: int = typer.Option(None, "--k-groups", help="Structured: groups kept per token."),
    sparsity_coef: float = typer.Option(None, "--sparsity-coef",
                                        help="L1 (relu) / L0 (jumprelu) weight."),
    init_from: str = typer.Option(None, "--init-from",
                                  help="Start from this SAE (lab name or sae-lens folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints; start over."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifact as JSON."),
    opts: _Common = None,  # type: ignore[assignment]  (filled by with_source_options)
) -> None:
    """Train one SAE (rerun the same command to resume after an interruption)."""
    from saes.training import SAETrainConfig

    cfg = SAETrainConfig(name=name, arch=arch, latents=latents, k=k, afa_lambda=afa_lambda,
                         k_groups=k_groups, sparsity_coefficient=sparsity_coef,
                         init_from=init_from, **opts.config_fields())
    _train([cfg], opts, overwrite, restart, as_json)


@sae_app.command("sweep")
@with_source_options
def sweep(
    arch: str = typer.Option("topk", "--arch", help="Comma list of architectures."),
    latents: str = typer.Option("4096", "--latents", help="Comma list of dictionary sizes."),
    k: str = typer.Option(None, "--k", help="Comma list of k (topk, batchtopk)."),
    afa_lambda: str = typer.Option(str(1 / 32), "--afa-lambda", help="Comma list (topafa)."),
    k_groups: str = typer.Option(None, "--k-groups", help="Comma list (structured)."),
    sparsity_coef: str = typer.Option(None, "--sparsity-coef", help="Comma list (relu/jumprelu)."),
    name_prefix: str = typer.Option(None, "--name-prefix",
                                    help="Names are <prefix>-<variant> (default: the acts name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing artifacts."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints; start over."),
    as_json: bool = typer.Option(False, "--json", help="Print the artifacts as JSON."),
    opts: _Common = None,  # type: ignore[assignment]  (filled by with_source_options)
) -> None:
    """Train every combination of the comma lists from one pass over the activations."""
    from saes.training import SAETrainConfig

    prefix = name_prefix or opts.acts or opts.live_model or "sae"
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
            configs.append(replace(cfg, name=f"{prefix}-{cfg.variant_label()}"))
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


@sae_app.command("choices")
def choices(as_json: bool = typer.Option(False, "--json", help="Print them as JSON.")) -> None:
    """List the values --arch, --normalize and --kernels take.

    From the registries that define them: saes.ARCHITECTURES, saes.training.config.NORMALIZATIONS
    and sparse_ops.dispatch.BACKENDS."""
    from saes import ARCHITECTURES
    from saes.training.config import NORMALIZATIONS
    from sparse_ops.dispatch import BACKEND_DESCRIPTIONS

    tables = {"arch": ARCHITECTURES, "normalize": NORMALIZATIONS, "kernels": BACKEND_DESCRIPTIONS}
    if as_json:
        echo_json(tables)
        return
    for option, table in tables.items():
        typer.echo(f"--{option}:")
        for value, meaning in table.items():
            typer.echo(f"  {value:<12} {meaning}")


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
    from app.cli import sae_eval_cmds

    sae_eval_cmds.add_commands(sae_app)


_add_eval_commands()


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
