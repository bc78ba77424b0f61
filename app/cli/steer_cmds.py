"""`workbench steer ...`: make, show, apply (generate) and evaluate steering vectors.

Every subcommand takes the artifact it works on as its first argument (the vector to make or
use, the LangFIR report to evaluate). `--strength` is always in units of the hook's mean
residual norm (resid_norm) and overrides the vector's stored default.

Other areas add subcommands to `steer_app` through a function `add_commands(steer_app)`.
"""

from __future__ import annotations

import typer

from app.cli.common import echo_json, echo_table, get_lab

steer_app = typer.Typer(help="Steering vectors: make, show, generate with, evaluate.",
                        no_args_is_help=True)


@steer_app.command("make")
def make(
    name: str = typer.Argument(..., help="Name of the steering artifact to write."),
    from_feature: str = typer.Option(None, help="SAE:INDEX, one SAE feature's decoder direction."),
    from_file: str = typer.Option(None, help="A steering pair, a .safetensors or .npy tensor."),
    from_report: str = typer.Option(None, help="A LangFIR report (with --language, --method)."),
    language: str = typer.Option(None, help="Target language (with --from-report)."),
    method: str = typer.Option("langfir", help="langfir, langfir_eq, diffmean or saediff."),
    hook: str = typer.Option(None, help="Hook of a plain tensor file."),
    model: str = typer.Option(None, help="Model of a plain tensor file."),
    key: str = typer.Option(None, help="Tensor name inside a .safetensors file."),
    strength: float = typer.Option(4.0, help="Default strength (x resid_norm)."),
    overwrite: bool = typer.Option(False, help="Replace an existing artifact of that name."),
) -> None:
    """Store a steering vector from a feature, a file or a LangFIR report."""
    from steering.making import (
        parse_feature,
        vector_from_file,
        vector_from_lab_feature,
        vector_from_report,
    )
    from steering.vectors import check_strength
    from workbench.errors import InvalidInputError

    lab = get_lab()
    check_strength(strength)
    if sum(x is not None for x in (from_feature, from_file, from_report)) != 1:
        raise InvalidInputError("give exactly one of --from-feature SAE:INDEX, --from-file PATH, "
                                "--from-report REPORT")
    if not overwrite and lab.exists(name):
        raise InvalidInputError(f"artifact {name!r} already exists; pass --overwrite")
    parents: list[str] = []
    if from_feature:
        sae, index = parse_feature(from_feature)
        vec = vector_from_lab_feature(lab, sae, index, strength)
        parents = [sae]
    elif from_file:
        vec = vector_from_file(lab, from_file, hook=hook, model=model, key=key, strength=strength)
    else:
        from saes import load_sae
        from steering.langfir import load_report

        if not language:
            raise InvalidInputError("--from-report needs --language")
        report = load_report(lab, from_report)
        sae = load_sae(report.meta["sae"], lab=lab, device="cpu") if method != "diffmean" else None
        vec = vector_from_report(report, language, method, sae, strength)
        parents = [from_report]
    from steering.langfir import lab_names

    art = vec.save_to_lab(lab, name, parents=lab_names(lab, parents), overwrite=overwrite)
    typer.echo(f"saved steering vector {art.name}: {vec.method} at {', '.join(vec.hooks)}, "
               f"strength {vec.strength}, resid_norm {next(iter(vec.resid_norm.values())):.3f}")


@steer_app.command("show")
def show(vector: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The sidecar of a steering vector (lab name or a file pair)."""
    vec = _load_vector(vector)
    side = vec.sidecar()
    if as_json:
        echo_json(side)
        return
    for key in ("model", "hooks", "d_model", "strength", "resid_norm", "method", "language"):
        typer.echo(f"{key}: {side[key]}")
    if vec.features:
        echo_table(vec.features[:20], ["source", "index", "weight"])


@steer_app.command("generate")
def generate_cmd(
    vector: str = typer.Argument(None, help="Steering vector (lab name or file pair); leave out "
                                 "with --feature."),
    prompt: list[str] = typer.Option(..., help="Prompt (repeat for a batch)."),  # noqa: B008
    strength: float = typer.Option(None, help="x resid_norm (default: the vector's)."),
    feature: str = typer.Option(None, help="SAE:INDEX to steer with instead of a vector."),
    clamp: float = typer.Option(None, help="With --feature: clamp its activation to this value "
                                "through the SAE splice (instead of adding its direction)."),
    positions: str = typer.Option("all", help="all, prompt or generated."),
    max_new_tokens: int = typer.Option(30, help="Tokens to generate."),
    temperature: float = typer.Option(0.8, help="Sampling temperature of the sampled column."),
    seed: int = typer.Option(0, help="Sampling seed."),
    model: str = typer.Option(None, help="Model (default: the vector's / SAE's)."),
    device: str = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Unsteered and steered continuations side by side, greedy and sampled (seeded)."""
    from steering.generation import GenerationConfig, clamp_feature, side_by_side
    from steering.making import parse_feature, vector_from_lab_feature
    from workbench.errors import InvalidInputError
    from workbench.models.loading import load_model

    lab = get_lab()
    if (vector is None) == (feature is None):
        raise InvalidInputError("give a VECTOR or --feature SAE:INDEX (not both)")
    steer, vec = None, None
    if feature and clamp is not None:
        from saes import load_sae

        sae_name, index = parse_feature(feature)
        sae = load_sae(sae_name, lab=lab, device="cpu")
        lm = load_model(model or sae.cfg.metadata.model_name, lab=lab, device=device)

        def steer():
            return clamp_feature(lm, sae, index, clamp)
    else:
        vec = vector_from_lab_feature(lab, *parse_feature(feature)) if feature else _load_vector(vector)
        lm = load_model(model or vec.model, lab=lab, device=device)
    for label, temp in (("greedy", 0.0), (f"sampled (T={temperature}, seed {seed})", temperature)):
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temp, seed=seed)
        rows = side_by_side(lm, prompt, vec, strength, positions, cfg, steer)
        typer.echo(f"== {label}")
        for row in rows:
            typer.echo(f"prompt:    {row['prompt']}")
            typer.echo(f"unsteered: {row['unsteered']!r}")
            typer.echo(f"steered:   {row['steered']!r}\n")


@steer_app.command("eval")
def eval_cmd(
    report: str = typer.Argument(..., help="LangFIR report whose vectors to evaluate."),
    name: str = typer.Option(None, help="Analysis artifact to write (default: <report>-eval)."),
    methods: str = typer.Option("langfir,diffmean", help="Comma-separated methods."),
    strengths: str = typer.Option("0,2,4,8", help="Comma-separated strengths (0 = unsteered)."),
    targets: str = typer.Option(None, help="Comma-separated target languages (default: all)."),
    prompts_per_source: int = typer.Option(4, help="Prompts per source language."),
    max_new_tokens: int = typer.Option(24, help="Tokens per continuation."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing artifact of that name."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Target-language accuracy (py3langid, langdetect), fluency (CE under the unsteered
    model) and BLEU per method x target x strength; stored as an `analysis` artifact."""
    import pandas as pd

    from steering.evaluation import SteerEvalConfig, run_steer_eval

    cfg = SteerEvalConfig(
        methods=tuple(_split(methods)), strengths=tuple(float(s) for s in _split(strengths)),
        targets=tuple(_split(targets)) if targets else None,
        prompts_per_source=prompts_per_source, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed)
    lab = get_lab()
    art = run_steer_eval(lab, report, name or f"{report}-eval", cfg, overwrite=overwrite)
    best = pd.read_parquet(art.path / "best.parquet")
    if as_json:
        echo_json(best.to_dict(orient="records"))
        return
    summary = pd.read_parquet(art.path / "summary.parquet")
    typer.echo(summary.pivot_table(index=["method", "strength"], columns="target",
                                   values="accuracy").round(2).to_string())
    typer.echo("\nbest strength per method and target:")
    cols = ["method", "target", "strength", "accuracy", "accuracy_langdetect", "fluency_ce", "bleu"]
    echo_table([{c: (f"{r[c]:.3f}" if isinstance(r[c], float) else r[c]) for c in cols}
                for r in best.to_dict(orient="records")], cols)
    typer.echo(f"saved {art.name}")


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _load_vector(spec: str):
    from pathlib import Path

    from steering.vectors import SteeringVector
    from workbench.errors import InvalidInputError

    lab = get_lab()
    try:
        if lab.exists(spec):
            return SteeringVector.from_lab(lab, spec)
    except InvalidInputError:  # not a valid artifact name: a path
        pass
    if Path(spec).expanduser().exists() or Path(spec + ".json").exists():
        return SteeringVector.load(spec)
    from workbench.errors import NotFoundError

    names = [a.name for a in lab.list("steering")]
    raise NotFoundError(f"no steering vector {spec!r}: not a lab artifact (available: "
                        f"{', '.join(names[:20]) or 'none'}) and not a file pair")


def register(app: typer.Typer) -> None:
    app.add_typer(steer_app, name="steer")
    _register_bench()


def bench_steering(
    model: str = typer.Option("default-lm", help="Model for the LangFIR run."),
    sae: str = typer.Option("default-topk", help="SAE for the LangFIR run."),
    corpus: str = typer.Option("default-corpus", help="Corpus for the LangFIR run."),
    vector: str = typer.Option(None, help="Vector for the generation benchmark (default: the "
                               "first steering artifact of the lab)."),
    prompts: int = typer.Option(8, help="Prompts per generation batch."),
    new_tokens: int = typer.Option(32, help="Tokens generated per prompt."),
    repeats: int = typer.Option(5, help="Interleaved repeats (median reported)."),
    skip_langfir: bool = typer.Option(False, help="Only the generation benchmark."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """LangFIR end-to-end time and the steering overhead on generation (measured figures)."""
    from steering.bench import bench_generation, bench_langfir
    from workbench.errors import NotFoundError

    lab = get_lab()
    out = {}
    if not skip_langfir:
        out["langfir"] = bench_langfir(lab, model, sae, corpus)
        out["langfir"].pop("_metrics", None)
    if vector is None:
        found = [a.name for a in lab.list("steering")]
        if not found:
            raise NotFoundError("no steering vector in the lab; pass --vector or run "
                                "`workbench langfir run` first")
        vector = found[0]
    for cache in (True, False):
        out[f"generation_{'cache' if cache else 'nocache'}"] = bench_generation(
            lab, vector, prompts, new_tokens, repeats, use_cache=cache)
    if as_json:
        echo_json(out)
        return
    if "langfir" in out:
        lf = out["langfir"]
        typer.echo(f"LangFIR end to end: {lf['end_to_end_s']:.1f} s (statistics "
                   f"{lf['statistics_s']:.1f} s, register check {lf['guide_s']:.1f} s, ablation "
                   f"matrix {lf['ablation_s']:.1f} s, {lf['n_vectors']} vectors "
                   f"{lf['vectors_s']:.1f} s; {lf['threads']} threads)")
    for key in ("generation_cache", "generation_nocache"):
        g = out[key]
        typer.echo(f"generation ({'KV cache' if g['kv_cache'] else 'no cache'}, {g['prompts']} "
                   f"prompts x {g['new_tokens']} tokens, {g['repeats']} repeats):")
        for stat, label in (("min_wall", "min wall"), ("median_wall", "median wall"),
                            ("median_cpu", "median CPU")):
            typer.echo(f"  {label:12s} unsteered {g[f'unsteered_{stat}_s']:.3f} s, steered "
                       f"{g[f'steered_{stat}_s']:.3f} s, overhead {g[f'overhead_{stat}_pct']:+.1f}%")


def _register_bench() -> None:
    from app.cli.bench_cmds import bench_app

    bench_app.command("steering")(bench_steering)
