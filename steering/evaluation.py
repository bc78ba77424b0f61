"""Steering evaluation: prompts in each source language steered to each target language.

For every method x target language x strength (strength 0 = unsteered), prompts from the other
languages are continued with the target's vector added; each continuation is scored by
- target-language accuracy: py3langid restricted to the report's languages says it is the
  target (`accuracy`); langdetect (seeded, same restriction) as a second opinion
  (`accuracy_langdetect`);
- fluency: mean next-token CE of the continuation under the *unsteered* model, given the prompt
  (`fluency_ce`, lower is more fluent);
- BLEU (sacrebleu) against the target-language version of the prompt's installation-guide
  paragraph, for prompts taken from the parallel set (`bleu`, NaN without references);
- `acc_x_bleu`: accuracy x BLEU / 100 (the paper's ranking).

    table = evaluate_steering(lab, "default-langfir", SteerEvalConfig())
    art = run_steer_eval(lab, "default-langfir", "default-steer-eval")   # kind `analysis`
    steer_evals(lab, "default-langfir")                  # the stored evaluations of a report
    ev = load_steer_eval(lab, "default-steer-eval")      # .summary, .best (DataFrames)
    accuracy_by_strength(ev.summary)                     # method x strength, mean over targets
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch

from steering.generation import GenerationConfig, generate
from steering.langfir import load_report
from steering.making import METHODS, vector_from_report
from steering.text_batches import token_losses
from workbench.errors import InvalidInputError
from workbench.lab import Artifact, Lab, validate_name, write_json


@dataclass
class SteerEvalConfig:
    """methods / targets (None: the report's languages) / strengths (x resid_norm; 0 is the
    unsteered baseline); prompts_per_source prompts per source language, each the first
    prompt_words words of a document (parallel-set paragraphs first, for BLEU); max_new_tokens
    per continuation; sampling: temperature 0 (greedy) or > 0 with `seed`."""

    methods: tuple[str, ...] = ("langfir", "diffmean")
    targets: tuple[str, ...] | None = None
    strengths: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0)
    prompts_per_source: int = 4
    prompt_words: int = 6
    max_new_tokens: int = 24
    temperature: float = 0.0
    positions: str = "all"
    seed: int = 0

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InvalidInputError(f"unknown methods {bad}; choose among {list(METHODS)}")
        for s in self.strengths:
            if not math.isfinite(float(s)):
                raise InvalidInputError(f"strengths must be finite numbers, got {s!r}")
        if self.prompts_per_source < 1 or self.max_new_tokens < 1:
            raise InvalidInputError("prompts_per_source and max_new_tokens must be >= 1")


@dataclass
class Prompt:
    text: str
    source: str
    group: str | None = None  # parallel group id (for BLEU references)


@dataclass
class _Judges:
    languages: list[str]
    detector: object = field(init=False)

    def __post_init__(self) -> None:
        from workbench.data.language_id import LanguageDetector

        self.detector = LanguageDetector(self.languages)

    def py3langid(self, text: str) -> str:
        return self.detector.detect(text)[0] if text.strip() else ""

    def langdetect(self, text: str) -> str:
        from langdetect import DetectorFactory, detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        DetectorFactory.seed = 0
        try:
            ranked = detect_langs(text)
        except LangDetectException:
            return ""
        for guess in ranked:
            if guess.lang in self.languages:
                return guess.lang
        return ""


def build_prompts(corpus, languages: Sequence[str], per_source: int, words: int) -> list[Prompt]:
    """Per language: parallel-set paragraphs first (they have references), then validation
    documents; each cut to its first `words` words."""
    parallel = corpus.parallel()
    validation = corpus.frame("validation")
    prompts = []
    for lang in languages:
        chosen: list[Prompt] = []
        if parallel is not None:
            rows = parallel[parallel.language == lang]
            for row in rows.head(per_source // 2 or 1).itertuples():
                chosen.append(Prompt(" ".join(row.text.split()[:words]), lang, str(row.group_id)))
        for text in validation[validation.language == lang].text.tolist():
            if len(chosen) >= per_source:
                break
            chosen.append(Prompt(" ".join(text.split()[:words]), lang))
        prompts.extend(chosen[:per_source])
    return prompts


@torch.no_grad()
def continuation_ce(model, prompt: str, continuation: str) -> float:
    """Mean CE of the continuation's tokens given the prompt, under `model` (no hooks)."""
    tok = model.tokenizer
    p = model.to_tokens(prompt)[0].tolist()
    c = tok.encode(continuation, add_special_tokens=False)
    if not c:
        return float("nan")
    ids = torch.tensor([(p + c)[: int(model.cfg.n_ctx)]])
    losses = token_losses(model, ids)[0]  # [pos - 1]
    return float(losses[len(p) - 1:].mean())


def evaluate_steering(lab: Lab, report_name: str, config: SteerEvalConfig | None = None,
                      device: str | None = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary table method x target x strength, per-generation rows)."""
    import sacrebleu

    from saes import load_sae
    from workbench.data.store import load_corpus
    from workbench.models.loading import load_model

    cfg = config or SteerEvalConfig()
    cfg.validate()
    report = load_report(lab, report_name)
    langs = report.languages
    targets = list(cfg.targets) if cfg.targets else langs
    for t in targets:
        report.check_language(t)
    model = load_model(report.meta["model"], lab=lab, device=device)
    sae = load_sae(report.meta["sae"], lab=lab, device="cpu")
    corpus = load_corpus(lab, report.meta["corpus"])
    parallel = corpus.parallel()
    refs = {}
    if parallel is not None:
        refs = {(str(r.group_id), r.language): r.text for r in parallel.itertuples()}
    prompts = build_prompts(corpus, langs, cfg.prompts_per_source, cfg.prompt_words)
    judges = _Judges(langs)
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               seed=cfg.seed)
    rows = []
    baseline = generate(model, [p.text for p in prompts], config=gen_cfg)
    for method in cfg.methods:
        for target in targets:
            chosen = [i for i, p in enumerate(prompts) if p.source != target]
            try:
                vec = vector_from_report(report, target, method, sae)
            except InvalidInputError:
                continue  # e.g. no kept LangFIR features for this language
            for strength in cfg.strengths:
                texts = [prompts[i].text for i in chosen]
                if float(strength) == 0.0:
                    outs = [baseline[i] for i in chosen]
                else:
                    outs = generate(model, texts, vec, strength, cfg.positions, gen_cfg)
                for i, out in zip(chosen, outs):
                    p = prompts[i]
                    ref = refs.get((p.group, target)) if p.group else None
                    bleu = (sacrebleu.sentence_bleu(out, [ref]).score if ref else float("nan"))
                    rows.append({"method": method, "target": target, "strength": float(strength),
                                 "source": p.source, "prompt": p.text, "continuation": out,
                                 "lid": judges.py3langid(out), "lid_langdetect": judges.langdetect(out),
                                 "fluency_ce": continuation_ce(model, p.text, out), "bleu": bleu})
    detail = pd.DataFrame(rows)
    if detail.empty:
        raise InvalidInputError(f"nothing to evaluate: no vector could be made from {report_name!r}")
    detail["hit"] = detail.lid == detail.target
    detail["hit_langdetect"] = detail.lid_langdetect == detail.target
    summary = (detail.groupby(["method", "target", "strength"])
               .agg(accuracy=("hit", "mean"), accuracy_langdetect=("hit_langdetect", "mean"),
                    fluency_ce=("fluency_ce", "mean"), bleu=("bleu", "mean"),
                    n=("hit", "size")).reset_index())
    summary["acc_x_bleu"] = summary.accuracy * summary.bleu.fillna(0.0)
    return summary, detail


def best_strengths(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method and target, the strength with the highest accuracy (lowest CE on ties)."""
    steered = summary[summary.strength > 0].sort_values(["accuracy", "fluency_ce"],
                                                        ascending=[False, True])
    return steered.groupby(["method", "target"]).head(1).sort_values(["method", "target"])


def run_steer_eval(lab: Lab, report_name: str, name: str, config: SteerEvalConfig | None = None,
                   overwrite: bool = False, device: str | None = "cpu") -> Artifact:
    """Evaluate and store the table as an `analysis` artifact (summary.parquet, detail.parquet,
    best.parquet, eval.json)."""
    validate_name(name)
    cfg = config or SteerEvalConfig()
    cfg.validate()
    if lab.exists(name) and not overwrite:
        raise InvalidInputError(f"artifact {name!r} already exists; pick another --name or pass "
                                "--overwrite")
    t0 = time.perf_counter()
    summary, detail = evaluate_steering(lab, report_name, cfg, device)
    best = best_strengths(summary)
    elapsed = time.perf_counter() - t0
    with lab.new_artifact("analysis", name, parents=[report_name],
                          config={"analysis": "steer-eval", **asdict(cfg)},
                          overwrite=overwrite) as art:
        summary.to_parquet(art.path / "summary.parquet", index=False)
        detail.to_parquet(art.path / "detail.parquet", index=False)
        best.to_parquet(art.path / "best.parquet", index=False)
        write_json(art.path / "eval.json", {"report": report_name, "config": asdict(cfg),
                                             "time_s": elapsed})
        art.manifest.update({"analysis": "steer-eval", "report": report_name})
        art.metrics.update({
            f"best_accuracy_{m}": float(best[best.method == m].accuracy.mean())
            for m in cfg.methods if (best.method == m).any()})
    return lab.get(name, kind="analysis")


# -- reading stored evaluations ----------------------------------------------------------------
EVAL_ANALYSIS = "steer-eval"


@dataclass
class StoredSteerEval:
    """A stored steering evaluation read back: the summary table (method, target, strength,
    accuracy, accuracy_langdetect, fluency_ce, bleu, n, acc_x_bleu) and the best strength per
    method and target (same columns)."""

    artifact: Artifact
    report: str | None
    summary: pd.DataFrame
    best: pd.DataFrame

    @property
    def name(self) -> str:
        return self.artifact.name


def steer_evals(lab: Lab, report: str | None = None) -> list[Artifact]:
    """The lab's steering evaluations (`analysis` artifacts written by `run_steer_eval`),
    optionally only those of LangFIR report `report`."""
    return [a for a in lab.list("analysis")
            if a.manifest.get("analysis") == EVAL_ANALYSIS
            and (report is None or a.manifest.get("report") == report)]


def load_steer_eval(lab: Lab, name: str) -> StoredSteerEval:
    art = lab.get(name, kind="analysis")
    if art.manifest.get("analysis") != EVAL_ANALYSIS:
        raise InvalidInputError(f"{name!r} is not a steering evaluation (an analysis artifact "
                                "written by `workbench steer eval`)")
    missing = [f for f in ("summary.parquet", "best.parquet") if not (art.path / f).exists()]
    if missing:
        raise InvalidInputError(f"the steering evaluation {name!r} lacks {missing}; run "
                                "`workbench steer eval` again with --overwrite")
    return StoredSteerEval(art, art.manifest.get("report"),
                           pd.read_parquet(art.path / "summary.parquet"),
                           pd.read_parquet(art.path / "best.parquet"))


def accuracy_by_strength(summary: pd.DataFrame, target: str | None = None) -> pd.DataFrame:
    """Per method and strength (ascending): target-language accuracy, fluency CE and BLEU,
    averaged over the targets (or of one `target`); n_targets counts the targets averaged."""
    rows = summary if target is None else summary[summary.target == target]
    if target is not None and rows.empty:
        raise InvalidInputError(f"the evaluation has no target {target!r}; it has "
                                f"{', '.join(sorted(summary.target.unique()))}")
    out = (rows.groupby(["method", "strength"])
           .agg(accuracy=("accuracy", "mean"), fluency_ce=("fluency_ce", "mean"),
                bleu=("bleu", "mean"), n_targets=("target", "nunique"))
           .reset_index().sort_values(["method", "strength"]))
    return out.reset_index(drop=True)
