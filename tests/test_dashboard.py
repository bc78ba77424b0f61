"""The dashboard serves the lab's artifacts on 127.0.0.1 (checked in headless Chromium)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench.lab import Lab

CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dashboard did not answer at {url}")


@pytest.fixture
def served_lab(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "demo-analysis", config={"what": "test"}) as art:
        art.metrics["score"] = 0.75
    port = _free_port()
    env = {**os.environ, "WORKBENCH_LAB": str(lab.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "app", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/_stcore/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dashboard_binds_localhost_and_lists_artifacts(served_lab):
    playwright = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "chromium is installed by scripts/setup.sh (apt-get install chromium)"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page()
        page.goto(served_lab)
        page.get_by_text("Sparsity workbench").first.wait_for(timeout=60_000)
        # st.dataframe draws on a canvas; its accessible cells are attached but hidden
        page.get_by_text("demo-analysis").first.wait_for(state="attached", timeout=30_000)
        body = page.inner_text("body")
        if os.environ.get("WORKBENCH_SCREENSHOT"):
            page.screenshot(path=os.environ["WORKBENCH_SCREENSHOT"], full_page=True)
        browser.close()
    assert "Artifacts" in body
