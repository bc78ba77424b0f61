"""The jobs the dashboard can start, as plain functions from form values to a command line.

`plan(kind, values, lab)` checks the values and returns a `JobPlan`: the `workbench` arguments,
the artifact names the job makes (so the job layer refuses a name already being made), and the
problems found. A plan with problems is never started. No Streamlit here, so the validation is
tested directly; `app.dashboard.views.lab` draws the forms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.errors import InvalidInputError
from workbench.lab import Lab, validate_name

SAE_BATCH = 4096  # `workbench sae train`'s default batch: training needs at least one
SAE_ARCHS = ("topk", "batchtopk", "topafa", "structured", "relu", "jumprelu")


@dataclass
class JobPlan:
    args: list[str]
    names: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class JobKind:
    key: str
    title: str
    summary: str


JOB_KINDS = (
    JobKind("default-lab", "Build the default lab",
            "corpus, tokenizer, LM, activations, probe, two SAEs with evaluations and feature "
            "statistics (several minutes on a laptop CPU)"),
    JobKind("lm", "Train a language model", "a TransformerLens model on a corpus artifact"),
    JobKind("acts", "Cache activations", "a model's activations at one hook over a corpus"),
    JobKind("sae", "Train an SAE", "one SAE on cached activations"),
    JobKind("sweep", "Sweep SAEs", "several SAEs from one pass over the activations"),
    JobKind("eval", "Evaluate an SAE", "NMSE, FVU, L0, dead, CE score, eps_LBO, ZF plot"),
    JobKind("stats", "Feature statistics", "what the feature browser shows for an SAE"),
    JobKind("langfir", "Run LangFIR", "language features of an SAE (kept features, "
            "selectivity, stability, ablation matrix, register check) and its steering vectors"),
    JobKind("steer-make", "Make a steering vector", "one vector from a LangFIR report "
            "(a target language and a method), stored as a `steering` artifact"),
    JobKind("steer-eval", "Evaluate steering", "a report's vectors steering prompts of every "
            "language: target-language accuracy, fluency, BLEU per method x target x strength"),
    JobKind("sparsity-law-lab", "Build the sparsity-law lab",
            "ReLU and SiLU LMs with kept checkpoints, a width/depth sweep and their fitted "
            "laws (about 15 minutes on 2 CPU cores; quick: a miniature in a minute or two)"),
    JobKind("sparsity-law", "Sparsity laws of models",
            "the PPL-p% activation ratio at every kept checkpoint of lab models, and the "
            "fitted laws"),
    JobKind("attention", "Attention sparsity",
            "per-head k@p coverage, entropy, sink/local mass, pattern classes and the loss "
            "under sparse attention"),
    JobKind("depth", "Depth utilization",
            "angular distances between layers, layer removal, usefulness, per-layer variance"),
    JobKind("chess-lab", "Build the chess lab",
            "chess games, dense / Switch / MoE-X models, an SAE and the board-state table "
            "(about an hour on 2 CPU cores)"),
    JobKind("moex-eval", "Evaluate MoE-X (board-state table)",
            "coverage, reconstruction, probes, router score vs L0 and expert load of the chess "
            "lab's models (the variants that exist)"),
)
ANALYSIS_KINDS = ("sparsity-law-lab", "sparsity-law", "attention", "depth")


def _new_name(lab: Lab, name: str, problems: list[str], overwrite: bool = False) -> str:
    name = (name or "").strip()
    try:
        validate_name(name)
    except InvalidInputError as exc:
        problems.append(str(exc))
        return name
    if lab.exists(name) and not overwrite:
        problems.append(f"an artifact named {name!r} already exists; choose another name")
    return name


def _existing(lab: Lab, name: str, kind: str, problems: list[str], what: str) -> str:
    if not name:
        problems.append(f"choose the {what}")
    elif not lab.exists(name):
        problems.append(f"there is no {kind} named {name!r} in the lab")
    elif lab.get(name).kind != kind:
        problems.append(f"{name!r} is a {lab.get(name).kind}, not a {kind}")
    return name


def _positive(values: dict[str, Any], key: str, problems: list[str], label: str,
              low: int = 1, high: int | None = None) -> int:
    try:
        value = int(values.get(key))
    except (TypeError, ValueError):
        problems.append(f"{label} must be a whole number")
        return 0
    if value < low or (high is not None and value > high):
        problems.append(f"{label} must be between {low} and {high}" if high is not None
                        else f"{label} must be at least {low}")
    return value


def _number(values: dict[str, Any], key: str, problems: list[str], label: str) -> float | None:
    try:
        return float(values.get(key))
    except (TypeError, ValueError):
        problems.append(f"{label} must be a number")
        return None


def _fraction(values: dict[str, Any], key: str, problems: list[str], label: str) -> float:
    value = _number(values, key, problems, label)
    if value is None:
        return 0.0
    if not 0.0 < value <= 1.0:
        problems.append(f"{label} must lie in (0, 1], got {value:g}")
    return value


def _finite(values: dict[str, Any], key: str, problems: list[str], label: str) -> float:
    import math

    value = _number(values, key, problems, label)
    if value is None:
        return 0.0
    if not math.isfinite(value):
        problems.append(f"{label} must be a finite number, got {value}")
        return 0.0
    return value


def _float_list(text: str, problems: list[str], label: str) -> list[float]:
    import math

    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        problems.append(f"{label}: write numbers separated by commas, e.g. 0,2,4")
        return []
    if not values or not all(math.isfinite(v) for v in values):
        problems.append(f"{label}: give at least one finite number")
    return values


def _words(text: Any) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(t).strip() for t in text if str(t).strip()]
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def _report_languages(lab: Lab, report: str) -> list[str]:
    return [str(x) for x in lab.get(report).manifest.get("languages", [])] if report else []


def _int_list(text: str, problems: list[str], label: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        problems.append(f"{label}: write whole numbers separated by commas, e.g. 16,32")
        return []
    if not values or any(v < 1 for v in values):
        problems.append(f"{label}: give at least one positive number")
    return values


def plan(kind: str, values: dict[str, Any], lab: Lab) -> JobPlan:
    """The command line for a job of `kind` (a JOB_KINDS key) from form `values`."""
    p: list[str] = []
    if kind == "default-lab":
        from app.recipes.default import DefaultRecipe

        r = DefaultRecipe()
        names = [n for n in (r.corpus, r.tokenizer, r.lm, r.acts, r.probe, r.topk_sae,
                             r.topafa_sae) if not lab.exists(n)]
        if not names:
            p.append("the default lab is complete already")
        return JobPlan(["lab", "build", "default"], names, p)
    if kind == "lm":
        corpus = _existing(lab, values.get("corpus", ""), "corpus", p, "corpus")
        tokenizer = values.get("tokenizer") or ""
        name = _new_name(lab, values.get("name", ""), p)
        steps = _positive(values, "steps", p, "steps", 1, 1_000_000)
        args = ["lm", "train", "--corpus", corpus, "--name", name, "--steps", str(steps),
                "--preset", str(values.get("preset", "tiny"))]
        if tokenizer:
            args += ["--tokenizer", _existing(lab, tokenizer, "tokenizer", p, "tokenizer")]
        return JobPlan(args, [name], p)
    if kind == "acts":
        model = _existing(lab, values.get("model", ""), "model", p, "model")
        corpus = _existing(lab, values.get("corpus", ""), "corpus", p, "corpus")
        hook = (values.get("hook") or "").strip()
        if not hook:
            p.append("choose the hook, e.g. blocks.0.hook_resid_post")
        name = _new_name(lab, values.get("name", ""), p)
        tokens = _positive(values, "tokens", p, "tokens", 1000)
        return JobPlan(["acts", "cache", "--model", model, "--hook", hook, "--corpus", corpus,
                        "--tokens", str(tokens), "--name", name], [name], p)
    if kind == "sae":
        acts = _existing(lab, values.get("acts", ""), "activations", p, "activations")
        name = _new_name(lab, values.get("name", ""), p)
        arch = values.get("arch", "topk")
        if arch not in SAE_ARCHS:
            p.append(f"unknown architecture {arch!r}; one of {', '.join(SAE_ARCHS)}")
        latents = _positive(values, "latents", p, "latents", 2)
        tokens = _positive(values, "tokens", p, "training tokens", SAE_BATCH)
        args = ["sae", "train", "--acts", acts, "--name", name, "--arch", arch,
                "--latents", str(latents), "--tokens", str(tokens)]
        if arch in ("topk", "batchtopk"):
            k = _positive(values, "k", p, "k", 1)
            if latents and k > latents:
                p.append(f"k ({k}) cannot exceed the number of latents ({latents})")
            args += ["--k", str(k)]
        return JobPlan(args, [name], p)
    if kind == "sweep":
        acts = _existing(lab, values.get("acts", ""), "activations", p, "activations")
        archs = [a for a in values.get("archs", []) if a]
        if not archs:
            p.append("choose at least one architecture")
        bad = [a for a in archs if a not in SAE_ARCHS]
        if bad:
            p.append(f"unknown architectures {bad}")
        latents = _int_list(values.get("latents", ""), p, "latents")
        ks = _int_list(values.get("k", ""), p, "k") if set(archs) & {"topk", "batchtopk"} else []
        prefix = _new_name(lab, values.get("prefix", ""), p, overwrite=True)
        tokens = _positive(values, "tokens", p, "training tokens", SAE_BATCH)
        names = _sweep_names(prefix, archs, latents, ks) if not p else []
        for n in names:
            if lab.exists(n):
                p.append(f"the sweep would make {n!r}, which exists; choose another prefix")
        args = ["sae", "sweep", "--acts", acts, "--arch", ",".join(archs),
                "--latents", ",".join(map(str, latents)), "--name-prefix", prefix,
                "--tokens", str(tokens)]
        if ks:
            args += ["--k", ",".join(map(str, ks))]
        return JobPlan(args, names, p)
    if kind in ("eval", "stats"):
        sae = _existing(lab, values.get("sae", ""), "sae", p, "SAE")
        tokens = _positive(values, "tokens", p, "tokens", 256)
        args = ["sae", kind, sae, "--tokens", str(tokens)]
        if values.get("acts"):
            args += ["--acts", _existing(lab, values["acts"], "activations", p, "activations")]
        return JobPlan(args, [sae], p)
    if kind in ("langfir", "steer-make", "steer-eval"):
        return _steering_plan(kind, values, lab, p)
    if kind in ANALYSIS_KINDS:
        return _analysis_plan(kind, values, lab, p)
    if kind == "chess-lab":
        from app.recipes.chess import ChessRecipe, table_rows

        r = ChessRecipe()
        rows = table_rows(r)
        names = [n for n in [r.prefix, f"{r.prefix}-tok", f"{r.prefix}-dense_relu-seed",
                             f"{r.prefix}-table"] + sorted({row.model for row in rows})
                 + sorted({row.sae for row in rows if row.sae}) if not lab.exists(n)]
        if not names:
            p.append("the chess lab is complete already")
        return JobPlan(["lab", "build", "chess"], names, p)
    if kind == "moex-eval":
        return _moex_eval_plan(values, lab, p)
    raise InvalidInputError(f"unknown job kind {kind!r}; one of "
                            f"{', '.join(k.key for k in JOB_KINDS)}")


def _sweep_names(prefix: str, archs: list[str], latents: list[int], ks: list[int]) -> list[str]:
    """The artifact names `workbench sae sweep` gives these combinations."""
    from saes.training import SAETrainConfig

    names = []
    for arch in archs:
        for n in latents:
            for k in (ks if arch in ("topk", "batchtopk") else [None]):
                cfg = SAETrainConfig(name="pending", arch=arch, latents=n, k=k)
                names.append(f"{prefix}-{cfg.variant_label()}")
    return list(dict.fromkeys(names))


def _steering_plan(kind: str, values: dict[str, Any], lab: Lab, p: list[str]) -> JobPlan:
    """`workbench langfir run`, `workbench steer make --from-report`, `workbench steer eval`."""
    from steering.making import METHODS

    if kind == "langfir":
        model = _existing(lab, values.get("model", ""), "model", p, "model")
        sae = _existing(lab, values.get("sae", ""), "sae", p, "SAE")
        corpus = _existing(lab, values.get("corpus", ""), "corpus", p, "corpus")
        inputs_ok = not p
        name = _new_name(lab, values.get("name", ""), p)
        if inputs_ok:
            reads = lab.get(sae).manifest.get("model")
            if reads and reads != model:
                p.append(f"SAE {sae!r} reads model {reads!r}, not {model!r}; choose its model")
        have = ([str(x) for x in lab.get(corpus).manifest.get("languages", [])]
                if inputs_ok else [])
        langs = _words(values.get("languages"))
        unknown = [x for x in langs if have and x not in have]
        if unknown:
            p.append(f"corpus {corpus!r} has no language {', '.join(unknown)}; it has "
                     f"{', '.join(have)}")
        tau = _fraction(values, "tau", p, "tau")
        tau_r = _fraction(values, "tau_r", p, "tau_r")
        vectors = ([f"{name}-{x}-{m}" for x in (langs or have) for m in METHODS]
                   if not p else [])
        taken = [v for v in vectors if lab.exists(v)]
        if taken:
            p.append(f"the run would make the vector {taken[0]!r}, which exists; choose another "
                     "name")
        args = ["langfir", "run", "--model", model, "--sae", sae, "--corpus", corpus,
                "--name", name, "--tau", f"{tau:g}", "--tau-r", f"{tau_r:g}"]
        if langs:
            args += ["--languages", ",".join(langs)]
        return JobPlan(args, [name, *vectors], p)
    report = _existing(lab, values.get("report", ""), "langfir", p, "LangFIR report")
    langs = _report_languages(lab, report) if not p else []
    if kind == "steer-make":
        language = str(values.get("language") or "")
        if langs and language not in langs:
            p.append(f"report {report!r} has no language {language!r}; it covers "
                     f"{', '.join(langs)}")
        method = str(values.get("method") or "")
        if method not in METHODS:
            p.append(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        name = _new_name(lab, values.get("name") or f"{report}-{language}-{method}", p)
        strength = _finite(values, "strength", p, "strength (x resid_norm)")
        return JobPlan(["steer", "make", name, "--from-report", report, "--language", language,
                        "--method", method, "--strength", f"{strength:g}"], [name], p)
    methods = _words(values.get("methods"))
    if not methods:
        p.append("choose at least one method")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.append(f"unknown methods {bad}; choose among {', '.join(METHODS)}")
    strengths = _float_list(values.get("strengths", ""), p, "strengths")
    targets = _words(values.get("targets"))
    unknown = [t for t in targets if langs and t not in langs]
    if unknown:
        p.append(f"report {report!r} has no language {', '.join(unknown)}; it covers "
                 f"{', '.join(langs)}")
    prompts = _positive(values, "prompts", p, "prompts per source language", 1, 100)
    tokens = _positive(values, "tokens", p, "tokens per continuation", 1, 500)
    name = _new_name(lab, values.get("name") or f"{report}-eval", p)
    args = ["steer", "eval", report, "--name", name, "--methods", ",".join(methods),
            "--strengths", ",".join(f"{s:g}" for s in strengths),
            "--prompts-per-source", str(prompts), "--max-new-tokens", str(tokens)]
    if targets:
        args += ["--targets", ",".join(targets)]
    return JobPlan(args, [name], p)


def analysis_name(analysis: str, model: str) -> str:
    """The name `workbench analyze ANALYSIS` gives its artifact by default."""
    from app.cli.analyze_cmds import default_name

    return default_name(analysis, model)


def _with_checkpoints(lab: Lab, names: list[str], problems: list[str]) -> list[str]:
    from workbench.models.model_io import list_checkpoints

    if not names:
        problems.append("choose at least one model with kept checkpoints")
    for name in names:
        if _existing(lab, name, "model", problems, "model") and lab.exists(name) and \
                lab.get(name).kind == "model" and len(list_checkpoints(lab.get(name).path)) < 2:
            problems.append(f"model {name!r} keeps fewer than 2 checkpoints; train it with "
                            "`--checkpoints geometric` (or build the sparsity-law lab)")
    return names


def _corpus_option(lab: Lab, values: dict[str, Any], problems: list[str]) -> list[str]:
    """`--corpus NAME` when the form names one (empty: the model's training corpus)."""
    corpus = values.get("corpus") or ""
    if not corpus:
        return []
    return ["--corpus", _existing(lab, corpus, "corpus", problems, "corpus")]


def _analysis_plan(kind: str, values: dict[str, Any], lab: Lab, p: list[str]) -> JobPlan:
    if kind == "sparsity-law-lab":
        from app.recipes.sparsity_law import SparsityLawRecipe

        quick = bool(values.get("quick"))
        r = SparsityLawRecipe.quick() if quick else SparsityLawRecipe()
        names = [n for n in (r.corpus, r.tokenizer, *(m for m, *_ in r.model_shapes()),
                             r.analysis) if not lab.exists(n)]
        if not names:
            p.append(f"the {'quick ' if quick else ''}sparsity-law lab is complete already "
                     f"(analysis {r.analysis!r})")
        return JobPlan(["lab", "build", "sparsity-law", *(["--quick"] if quick else [])],
                       names, p)
    if kind == "sparsity-law":
        models = _with_checkpoints(lab, [m for m in values.get("models", []) if m], p)
        name = _new_name(lab, values.get("name") or
                         (analysis_name("sparsity-law", models[0]) if models else ""), p)
        tokens = _positive(values, "tokens", p, "evaluation tokens", 256)
        return JobPlan(["analyze", "sparsity-law", *models, "--tokens", str(tokens),
                        "--name", name, *_corpus_option(lab, values, p)], [name], p)
    model = _existing(lab, values.get("model", ""), "model", p, "model")
    name = _new_name(lab, values.get("name") or (analysis_name(kind, model) if model else ""), p)
    tokens = _positive(values, "tokens", p, "evaluation tokens", 256)
    args = ["analyze", kind, "--model", model, "--tokens", str(tokens), "--name", name,
            *_corpus_option(lab, values, p)]
    if model and lab.exists(model) and not values.get("corpus") and \
            not lab.get(model).manifest.get("corpus"):
        p.append(f"model {model!r} records no training corpus; choose the corpus of the "
                 "evaluation tokens")
    if kind == "attention" and not values.get("whatif", True):
        args.append("--no-whatif")
    if kind == "depth":
        fit = _positive(values, "fit_tokens", p, "fit tokens", 256)
        args += ["--fit-tokens", str(fit)]
    return JobPlan(args, [name], p)


def _moex_eval_plan(values: dict[str, Any], lab: Lab, p: list[str]) -> JobPlan:
    """`workbench moex eval` stored as `name`: over values["rows"] (a stored table's rows, to
    re-evaluate it) or the chess recipe's table rows, those whose models (and SAE) exist; at
    values["layer"] or the models' last block (the recipe's eval layer)."""
    from app.recipes.chess import ChessRecipe, table_rows
    from saes.board_eval import TableRow

    dataset = _existing(lab, values.get("dataset") or "chess", "corpus", p, "chess dataset")
    name = _new_name(lab, values.get("name") or "chess-table", p,
                     overwrite=bool(values.get("overwrite")))
    wanted = ([TableRow(**r) for r in values["rows"]] if values.get("rows")
              else table_rows(ChessRecipe(prefix=dataset)))
    rows = [r for r in wanted if lab.exists(r.model) and (r.sae is None or lab.exists(r.sae))]
    if not rows:
        p.append(f"no models of the chess lab {dataset!r} yet; build them with "
                 "`workbench lab build chess`")
        return JobPlan([], [name], p)
    layer = values.get("layer")
    if layer is None:
        model = lab.get(rows[0].model)
        layer = int(model.config.get("model", {}).get("n_layers", 1)) - 1
    models = ",".join(f"{'~' if r.group == 'ablation' else ''}{r.label}="
                      f"{r.model}{'+' + r.sae if r.sae else ''}" for r in rows)
    args = ["moex", "eval", "--dataset", dataset, "--models", models, "--layer", str(layer),
            "--name", name]
    if values.get("max_games"):
        args += ["--max-games", str(_positive(values, "max_games", p, "games per split"))]
    if values.get("overwrite"):
        args.append("--overwrite")
    return JobPlan(args, [name], p)
