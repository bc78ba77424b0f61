"""Lab recipes: named builds that reach across the layers (`workbench lab build RECIPE`).

A recipe is a function `build(lab, echo, quick=False)` that makes whatever of its artifacts is
missing (each step is skipped when its artifact exists, so an interrupted build resumes) and
prints one line per step through `echo`. Recipes live in `app` because they use every package
(core, saes, steering). Register a new one with `@recipe("name", "one-line summary")`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from workbench.errors import NotFoundError
from workbench.lab import Lab

BuildFn = Callable[..., None]


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    module: str  # module under app.recipes that defines `build(lab, echo, quick=False)`

    def build(self, lab: Lab, echo: Callable[[str], None] = print, quick: bool = False) -> None:
        module = importlib.import_module(f"app.recipes.{self.module}")
        module.build(lab, echo=echo, quick=quick)


# The registry: name -> Recipe. Modules are imported only when their recipe is built, so
# listing recipes stays fast.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("default", "multilingual corpus, tokenizer, LM, activations, probe, SAEs "
               "(what `workbench demo` builds)", "default"),
        Recipe("sparsity-law", "ReLU and SiLU gated-MLP LMs with geometric checkpoints, a "
               "width/depth sweep, and their fitted activation-sparsity laws", "sparsity_law"),
        Recipe("chess", "chess games, dense / Switch / MoE-X models, SAE, board-state table "
               "(MoE-X interpretability)", "chess"),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; NotFoundError listing the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise NotFoundError(
            f"unknown lab recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} "
            "(see `workbench lab build --help`)"
        ) from None


def run_step(lab: Lab, tag: str, name: str, build: Callable[[], None],
             echo: Callable[[str], None] = print, report_skip: bool = False) -> bool:
    """Make artifact `name` with `build()` unless the lab has it (so a rerun resumes); prints
    `[tag] building NAME ...` and `[tag] NAME done in S s`. Returns whether it built."""
    if lab.exists(name):
        if report_skip:
            echo(f"[{tag}] {name}: exists, skipped")
        return False
    echo(f"[{tag}] building {name} ...")
    start = time.perf_counter()
    build()
    echo(f"[{tag}] {name} done in {time.perf_counter() - start:.0f} s")
    return True
