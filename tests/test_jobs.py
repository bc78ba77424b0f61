"""The job layer: one running job per artifact name (two processes racing, a real CLI command
refused at once), a kill -9'd holder taken over, background jobs cancelled and resumed, and a
corrupt manifest that does not hide the rest of the lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workbench.jobs import ACTIVE, JobConflictError, cancel, pid_alive
from workbench.lab import Lab

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def _holder_script(root: Path, name: str, seconds: float, names: tuple[str, ...] = ()) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from workbench.jobs import JobConflictError
        from workbench.lab import Lab
        lab = Lab({str(root)!r})
        try:
            with lab.job("test", {name!r}, names={list(names)!r}) as job:
                print("holding", job.id, flush=True)
                time.sleep({seconds})
                job.update(1, force=True)
        except JobConflictError as exc:
            print("refused:", exc, flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)


def _start_holder(root: Path, name: str, seconds: float = 60.0, names: tuple[str, ...] = ()):
    proc = subprocess.Popen([sys.executable, "-c", _holder_script(root, name, seconds, names)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.startswith("holding"), line + proc.stdout.read()
    return proc, int(line.split()[1])


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def test_two_processes_racing_for_one_name(tmp_path):
    root = tmp_path / "lab"
    Lab(root)
    script = _holder_script(root, "x", 3.0)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    refused = next(o for o in outs if "refused" in o)
    winner = Lab(root).jobs("x")[0]
    assert f"job {winner['id']}" in refused and "workbench lab cancel" in refused
    assert [j["status"] for j in Lab(root).jobs("x")] == ["done"]


def test_sweep_holds_all_its_names_and_refusal_is_immediate(tmp_path):
    lab = Lab(tmp_path / "lab")
    proc, job_id = _start_holder(lab.root, "a", names=("b", "c"))
    try:
        t0 = time.time()
        with pytest.raises(JobConflictError, match=f"job {job_id} "), lab.job("test", "c"):
            pass
        assert time.time() - t0 < 2.0
        with pytest.raises(JobConflictError, match="being made"):
            lab.work_dir("b")   # checkpoints of a held name are not handed out either
        with pytest.raises(JobConflictError):
            lab.remove("a")
        with lab.job("test", "d"):  # other names are free
            pass
        assert lab.jobs("a")[0]["names"] == ["a", "b", "c"]
    finally:
        proc.kill()
        proc.wait()


def test_second_cli_training_of_one_name_is_refused_at_once(tmp_path):
    from fixtures_lab import small_corpus

    from workbench.models.tokenizer import train_tokenizer_artifact

    lab = Lab(tmp_path / "lab")
    small_corpus(lab, per_language=40)
    train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=300)
    proc, job_id = _start_holder(lab.root, "lmx")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "--lab", str(lab.root), "lm", "train",
             "--corpus", "corpus", "--tokenizer", "tok", "--name", "lmx", "--steps", "5"],
            env=ENV, check=False, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"already being made by job {job_id}" in out.stderr
        assert not any((lab.root / "work" / "lmx").glob("*"))  # nothing written by the second
    finally:
        proc.kill()
        proc.wait()


def test_killed_holder_is_detected_and_taken_over(tmp_path):
    lab = Lab(tmp_path / "lab")
    proc, job_id = _start_holder(lab.root, "y")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    row = lab.jobs("y")[0]
    assert row["id"] == job_id and row["status"] == "lost"
    assert f"pid {proc.pid}" in row["message"] and "resume" in row["message"]
    with lab.job("test", "y") as job:
        assert job.id != job_id
    assert [j["status"] for j in lab.jobs("y")] == ["done", "lost"]


def test_killed_holder_still_marked_running_is_taken_over_by_the_lock(tmp_path):
    """The lock file, not the listing, finds the dead holder: taking the name marks it lost."""
    lab = Lab(tmp_path / "lab")
    proc, job_id = _start_holder(lab.root, "z")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with lab.job("test", "z"):
        assert lab.job_row(job_id)["status"] == "lost"


def _lm_command(name: str, steps: int) -> list[str]:
    return ["lm", "train", "--corpus", "corpus", "--tokenizer", "tok", "--name", name,
            "--steps", str(steps), "--save-every", "5", "--eval-every", "1000",
            "--batch-size", "2", "--n-ctx", "32", "--warmup", "2"]


def test_background_job_cancel_keeps_checkpoints_and_same_command_resumes(tmp_path):
    from fixtures_lab import small_corpus

    from app.cli.background import start_command
    from workbench.models.tokenizer import train_tokenizer_artifact

    lab = Lab(tmp_path / "lab")
    small_corpus(lab, per_language=40)
    train_tokenizer_artifact(lab, "corpus", "tok", vocab_size=300)
    command = _lm_command("lmc", 400)
    job_id = start_command(lab, command)
    assert lab.job_row(job_id)["status"] in ACTIVE

    def training_step():
        kids = lab.jobs_of_parent(job_id)
        return kids and kids[0]["step"] >= 7 and kids[0]

    child = _wait(training_step, 120, "the background training to pass step 7")
    # a second start of the same name is refused at once, naming the running job
    with pytest.raises(JobConflictError, match=f"job {child['id']} "):
        start_command(lab, command)
    row = cancel(lab, job_id)
    assert row["status"] == "cancelled" and "resume" in row["message"]
    assert not pid_alive(row["pid"])
    assert lab.job_row(child["id"])["status"] == "cancelled"
    assert any((lab.root / "work" / "lmc").iterdir())  # checkpoints kept
    assert not lab.exists("lmc")
    # the same command (here with fewer steps left: a shorter schedule is refused, so the same
    # settings) resumes from the saved state rather than from step 0
    resumed = start_command(lab, command)
    kid = _wait(lambda: lab.jobs_of_parent(resumed), 60, "the resumed job")[0]
    first_step = _wait(lambda: lab.job_row(kid["id"])["step"] or None, 60, "resumed progress")
    assert first_step >= 5
    cancel(lab, resumed)
    log = (lab.root / "logs" / f"job-{job_id}.log").read_text()
    assert "train" in log


def test_background_job_failure_is_reported_with_its_error(tmp_path):
    from app.cli.background import start_command

    lab = Lab(tmp_path / "lab")
    job_id = start_command(lab, ["lm", "train", "--corpus", "nope", "--name", "m1"])
    row = _wait(lambda: (r := lab.job_row(job_id))["status"] not in ACTIVE and r, 60, "failure")
    assert row["status"] == "failed" and "nope" in row["message"]


def test_lab_cli_jobs_and_cancel(tmp_path):
    lab = Lab(tmp_path / "lab")
    proc, job_id = _start_holder(lab.root, "w")
    try:
        run = lambda *a: subprocess.run(
            [sys.executable, "-m", "app.cli", "--lab", str(lab.root), "lab", *a],
            env=ENV, check=False, capture_output=True, text=True, timeout=60)
        listing = run("jobs", "--active", "--json")
        assert [r["id"] for r in json.loads(listing.stdout)] == [job_id]
        out = run("cancel", str(job_id))
        assert out.returncode == 0 and "cancelled" in out.stdout
        proc.wait(30)
        assert lab.job_row(job_id)["status"] == "cancelled"
        again = run("cancel", str(job_id))
        assert again.returncode == 2 and "not running" in again.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_corrupt_manifest_is_flagged_and_the_rest_listed(tmp_path):
    lab = Lab(tmp_path / "lab")
    for name in ("good", "bad"):
        with lab.new_artifact("analysis", name):
            pass
    (lab.artifact_path("bad") / "manifest.json").write_text("{not json")
    assert [a.name for a in lab.list()] == ["good"]
    (broken,) = lab.broken()
    assert broken["name"] == "bad" and "workbench lab rm bad" in broken["error"]
    out = subprocess.run([sys.executable, "-m", "app.cli", "--lab", str(lab.root), "lab", "list"],
                         env=ENV, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "good" in out.stdout
    assert "BROKEN bad" in out.stderr and "corrupt" in out.stderr


def test_job_progress_points_are_kept_as_a_curve(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.job("train", "c", total=3) as job:
        for step in (1, 2, 3):
            job.update(step, force=True, loss=1.0 / step)
    points = lab.job_history(job.id)
    assert [p["step"] for p in points] == [1, 2, 3]
    assert [p["loss"] for p in points] == [1.0, 0.5, 1 / 3]
