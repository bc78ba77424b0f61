"""Render-time benchmark of the dashboard pages (`workbench bench dashboard`).

Each page runs in Streamlit's AppTest (the real script runner, no browser): once cold (models,
SAEs and tables loaded), then `repeats` warm reruns. Reported per page: the cold time, and the
median warm time of the page script itself (what the user waits for on a rerun) next to the
AppTest round trip (which adds the test runner's own polling). The feature page is measured
with every panel drawn: contexts, logit effects, correlations, test-your-text and a steering
generation.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

MAIN = Path(__file__).resolve().parent / "main.py"
# page key -> (script under app/dashboard, warm goal in s, first docstring line of its main())
PAGE_TABLE = {
    "lab": ("views/lab.py", 2.0, "The Lab page"),
    "model": ("views/model.py", 2.0, "The Model page"),
    "saes": ("views/saes.py", 2.0, "The SAEs page"),
    "features": ("views/features.py", 1.0, "The feature browser"),
    "steering": ("views/steering.py", 2.0, "The LangFIR and steering page"),  # with a generation
    "laws": ("views/sparsity_laws.py", 2.0, "The Sparsity laws page"),
    "attention": ("views/attention.py", 2.0, "The Attention sparsity page"),
    "depth": ("views/depth.py", 2.0, "The Depth utilization page"),
    "moex": ("views/moex.py", 2.0, "The MoE-X page"),
}
PAGES = {key: script for key, (script, _, _) in PAGE_TABLE.items()}
GOALS = {key: goal for key, (_, goal, _) in PAGE_TABLE.items()}
TITLES = {key: title for key, (_, _, title) in PAGE_TABLE.items()}


@dataclass
class PageTiming:
    page: str
    cold_s: float
    warm_s: float        # median page-script time over the warm reruns
    round_trip_s: float  # median AppTest round trip over the warm reruns
    goal_s: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.warm_s < self.goal_s and not self.problems


def _all_panels(at) -> None:
    """Open the feature page with test-your-text and steering run (results then cached)."""
    at.button(key="test-run").click().run()
    at.button(key="steer-run").click().run()


def bench_page(name: str, repeats: int = 5) -> PageTiming:
    from streamlit.testing.v1 import AppTest

    from app.dashboard import common

    at = AppTest.from_file(str(MAIN), default_timeout=600)
    t0 = time.perf_counter()
    at.run()
    if name != "lab":
        t0 = time.perf_counter()
        at.switch_page(PAGES[name])
        at.run()
    cold = time.perf_counter() - t0
    if name == "features" and not at.exception:
        _all_panels(at)
    if name == "steering" and not at.exception:
        at.button(key="play-run").click().run()
    warm, trips = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        at.run()
        trips.append(time.perf_counter() - t)
        warm.append(common.RENDER_SECONDS.get(TITLES[name], trips[-1]))
    problems = [str(e.value)[:200] for e in at.exception] + [str(e.value)[:200] for e in at.error]
    if name == "features" and not problems:
        charts, codes = len(at.get("plotly_chart")), len(at.code)
        if charts < 3 or codes < 2:  # histogram, logit effects, your text; two generations
            problems.append(f"not every panel was drawn ({charts} charts, {codes} texts)")
    if name == "steering" and not problems and len(at.code) < 2:
        problems.append("the playground's generation was not drawn")
    return PageTiming(name, cold, statistics.median(warm), statistics.median(trips),
                      GOALS[name], problems)


def bench_dashboard(lab_root: str | os.PathLike, pages: list[str] | None = None,
                    repeats: int = 5) -> list[PageTiming]:
    os.environ["WORKBENCH_LAB"] = str(lab_root)
    return [bench_page(p, repeats) for p in (pages or list(PAGES))]


def format_report(rows: list[PageTiming]) -> str:
    lines = [f"{'page':10} {'cold s':>8} {'warm s':>8} {'round trip s':>13} {'goal s':>7}  ok"]
    for r in rows:
        lines.append(f"{r.page:10} {r.cold_s:8.2f} {r.warm_s:8.3f} {r.round_trip_s:13.3f} "
                     f"{r.goal_s:7.1f}  {'yes' if r.ok else 'NO'}")
        lines += [f"    problem: {p}" for p in r.problems]
    return "\n".join(lines)
