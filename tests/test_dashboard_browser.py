"""The dashboard in a real browser: `workbench app` on a free port of 127.0.0.1, driven with
Debian's Chromium through playwright. Opens every page, searches a feature, runs
test-your-text and steering generations (feature browser, LangFIR and steering page), checks
the results appear, that the browser console shows no errors, and saves screenshots
(1280 x 800) under a temporary folder ($WORKBENCH_SCREENSHOTS to keep them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures_analysis import add_analyses
from fixtures_dashboard import SAE, add_dashboard_saes
from fixtures_steering import add_steering_artifacts

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dashboard did not answer at {url}")


@contextmanager
def _serve(lab):
    """`workbench app` over `lab` on a free port; yields the port."""
    port = _free_port()
    env = {**os.environ, "WORKBENCH_LAB": str(lab.root),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "app", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def served(tiny_lab):
    lab = add_analyses(add_steering_artifacts(add_dashboard_saes(tiny_lab)))
    with _serve(lab) as port:
        yield lab, port


@pytest.fixture(scope="module")
def served_chess(tmp_path_factory):
    """The quick chess lab (its own lab: chess models in the shared lab would change the other
    pages' defaults)."""
    from moex_fixtures import build_quick_chess_lab

    lab = build_quick_chess_lab(tmp_path_factory.mktemp("browser_chess") / "lab")
    with _serve(lab) as port:
        yield lab, port


def _open_chromium(p, errors: list[str]):
    """Headless Debian Chromium and a 1280 x 800 page whose console errors, page errors, failed
    requests and HTTP errors are appended to `errors`."""
    browser = p.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 else None)
    return browser, page


def _settle(page) -> None:
    """Wait until the script run is over, then let the charts draw."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=90_000)
    page.wait_for_timeout(1000)


def test_port_taken_gives_a_clear_message(served):
    lab, port = served
    out = subprocess.run([sys.executable, "-m", "app.cli", "app", "--port", str(port)],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO),
                              "WORKBENCH_LAB": str(lab.root)})
    assert out.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in out.stderr


def test_dashboard_pages_in_chromium(served, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "chromium is installed by scripts/setup.sh (apt-get install chromium)"
    lab, port = served
    base = f"http://127.0.0.1:{port}"
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    t0 = time.time()
    with playwright.sync_playwright() as p:
        browser, page = _open_chromium(p, errors)

        def settle() -> None:
            _settle(page)

        def visit(link: str, text: str, shot: str, full: bool = False) -> None:
            """Open a page through the navigation (as a user does)."""
            page.get_by_role("link", name=link).first.click()
            page.get_by_text(text).first.wait_for(timeout=90_000)
            settle()
            assert not page.get_by_text("Traceback").count()
            page.screenshot(path=str(shots / f"{shot}.png"))
            if full:  # the whole page: Streamlit scrolls inside, so grow the window
                page.set_viewport_size({"width": 1280, "height": 3200})
                settle()
                page.screenshot(path=str(shots / f"{shot}-full.png"))
                page.set_viewport_size({"width": 1280, "height": 800})

        page.goto(base)
        page.get_by_text("Sparsity workbench").first.wait_for(timeout=90_000)
        settle()
        page.screenshot(path=str(shots / "lab.png"))
        page.get_by_role("tab", name="Lineage").click()
        settle()
        page.screenshot(path=str(shots / "lab-lineage.png"))
        visit("Model", "Next-token predictions", "model")
        visit("SAEs", "NMSE vs L0", "saes")
        visit("Sparsity laws", "Fitted laws", "sparsity-laws", full=True)
        visit("Attention sparsity", "Attention output error per layer", "attention", full=True)
        visit("Depth utilization", "Causal scores", "depth", full=True)
        visit("MoE-X", "No chess lab yet", "moex-empty")
        page.get_by_role("link", name="Feature browser").first.click()
        settle()
        # other tests of the session may have added SAEs to the shared lab: pick ours
        if f"sae={SAE}" not in page.url:
            page.get_by_test_id("stSelectbox").filter(has_text="SAE").first.click()
            page.get_by_role("option", name=SAE, exact=True).click()
        page.get_by_text("Test your own text").first.wait_for(timeout=90_000)
        settle()
        assert not page.get_by_text("Traceback").count()
        page.screenshot(path=str(shots / "features.png"))
        assert f"sae={SAE}" in page.url

        # search a feature by the token it fires on
        from saes.feature_stats import load_feature_stats

        _, contexts = load_feature_stats(lab, SAE)
        top = contexts[(contexts.kind == "top") & (contexts["rank"] == 0)].iloc[0]
        box = page.get_by_placeholder("e.g. ' der' or 'the'")
        box.fill(str(top.tokens[top.centre]))
        box.press("Enter")
        page.get_by_text("Open feature").first.wait_for(timeout=60_000)

        # test your own text
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("on your text").first.wait_for(timeout=60_000)
        # steering
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Unsteered").first.wait_for(timeout=60_000)
        page.get_by_text("Steered (feature").first.wait_for(timeout=60_000)
        settle()
        page.screenshot(path=str(shots / "features-full.png"), full_page=True)

        # LangFIR and steering: the report's tabs, then a steering generation
        visit("LangFIR and steering", "Steering playground", "steering")
        for tab in ("Selectivity", "Stability", "Ablation matrix", "Register check"):
            page.get_by_role("tab", name=tab).click()
            settle()
            page.screenshot(path=str(shots / f"steering-{tab.split()[0].lower()}.png"))
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("Steered:").first.wait_for(timeout=60_000)
        page.get_by_text("py3langid hears").first.wait_for(timeout=60_000)
        settle()
        assert not page.get_by_text("Traceback").count()
        for anchor, shot in (("Steered:", "playground"), ("Steering evaluation", "evaluation"),
                             ("Export", "export")):
            page.get_by_text(anchor, exact=anchor == "Export").first.evaluate(
                "e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / f"steering-{shot}.png"))
        browser.close()
    # not a timing test (each wait has its own timeout; `workbench bench dashboard` measures)
    print(f"browser walk: {time.time() - t0:.0f} s")
    assert not errors, errors


def test_moex_page_in_chromium(served_chess, tmp_path):
    """The MoE-X page on a chess lab: table, charts, the board (inline SVG) and a move of the
    position slider; no console errors."""
    playwright = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "chromium is installed by scripts/setup.sh (apt-get install chromium)"
    _, port = served_chess
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser, page = _open_chromium(p, errors)

        def settle() -> None:
            _settle(page)

        page.goto(f"http://127.0.0.1:{port}")  # a deep link probes /moex/_stcore (404s)
        page.get_by_text("Sparsity workbench").first.wait_for(timeout=90_000)
        settle()
        page.get_by_role("link", name="MoE-X").first.click()
        page.get_by_text("Board view").first.wait_for(timeout=90_000)
        settle()
        assert not page.get_by_text("Traceback").count()
        page.screenshot(path=str(shots / "moex.png"))
        page.get_by_role("slider").last.focus()
        page.keyboard.press("End")
        settle()
        board = page.locator('img[src^="data:image/svg+xml"]')
        board.first.wait_for(timeout=30_000)
        board.first.scroll_into_view_if_needed()
        settle()
        page.screenshot(path=str(shots / "moex-board.png"))
        page.screenshot(path=str(shots / "moex-full.png"), full_page=True)
        assert page.get_by_text("units active").count()
        browser.close()
    assert not errors, errors
