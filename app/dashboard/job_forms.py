"""The jobs the dashboard can start, as plain functions from form values to a command line.

`plan(kind, values, lab)` checks the values and returns a `JobPlan`: the `workbench` arguments,
the artifact names the job makes (so the job layer refuses a name already being made), and the
problems found. A plan with problems is never started. No Streamlit here, so the validation is
tested directly; `app.dashboard.pages.lab` draws the forms.
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
    JobKind("chess-lab", "Build the chess lab",
            "chess games, dense / Switch / MoE-X models, an SAE and the board-state table "
            "(about an hour on 2 CPU cores)"),
    JobKind("moex-eval", "Evaluate MoE-X (board-state table)",
            "coverage, reconstruction, probes, router score vs L0 and expert load of the chess "
            "lab's models (the variants that exist)"),
)


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
