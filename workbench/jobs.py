"""The job layer: one running job per artifact name, background jobs, stale-lock takeover, cancel.

Used by every long command through `Lab.job(...)` and by the dashboard's job forms:

    with lab.job("sae-train", "sae-a", config, total=1000, names=["sae-b"]) as job:  # holds both
        ...
    job_id = launch(lab, [sys.executable, "-m", "app.cli", "sae", "train", "--name", "x"],
                    title="sae train x", names=["x"])      # a background process
    cancel(lab, job_id)                                     # stop it, keep its checkpoints

Name locks. A job holds an exclusive `flock` on `locks/<name>.lock` for every artifact name it
makes. The kernel drops the lock when the holding process dies (even with kill -9), so a dead
job never blocks its names: the next job takes the lock over and marks the dead job `lost`.
A second start of a held name is refused at once with a `JobConflictError` naming the running
job. Locks are re-entrant within one process (a recipe that nests jobs for the same name).

Background jobs. `launch` records a `command` job (status `starting`) and starts
`python -m workbench.jobs run ID`, a small supervisor in its own session that runs the command
with `$WORKBENCH_JOB_ID` set, so the command's own `lab.job` rows record this job as their
`parent`; output goes to `logs/job-ID.log`; the supervisor sets the final status from the exit
code (`done`, `failed` with the last error line, `cancelled`).

Cancel. `cancel` flags the job, sends SIGINT to its process group (the command raises
KeyboardInterrupt, the job is marked `cancelled`, checkpoints stay in `work/<name>/`), then
SIGTERM and finally SIGKILL if it does not stop. Rerunning the same command resumes.

Job statuses: starting, running, cancelling (active); done, failed, interrupted, cancelled, lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError

if TYPE_CHECKING:
    from workbench.lab import Lab

ACTIVE = ("starting", "running", "cancelling")
FINISHED = ("done", "failed", "interrupted", "cancelled", "lost")
JOB_ID_ENV = "WORKBENCH_JOB_ID"
LOCKS_DIR = "locks"
LOGS_DIR = "logs"


class JobConflictError(WorkbenchError):
    """An artifact name is already held by a running job."""


# -- process liveness -------------------------------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


# -- name locks -------------------------------------------------------------------------------
@dataclass
class _Held:
    fd: int
    count: int = 1
    claimed: bool = False  # taken by `claim` (work_dir) and kept until that name's job ends


_HELD: dict[str, _Held] = {}  # lock file path -> open descriptor, in this process


def lock_path(lab: Lab, name: str) -> Path:
    from workbench.lab import validate_name

    folder = lab.root / LOCKS_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"{validate_name(name)}.lock"


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _write_holder(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _conflict_message(lab: Lab, name: str, holder: dict[str, Any]) -> str:
    job_id = holder.get("job")
    row = lab.job_row(job_id) if job_id else None
    if row is not None:
        what = (f"job {row['id']} ({row['kind']}, pid {row['pid']}, {row['status']}, started "
                f"{time.strftime('%H:%M:%S', time.localtime(row['created']))})")
        how = f"cancel it with `workbench lab cancel {row['id']}`"
    else:
        what = f"another process (pid {holder.get('pid', '?')}, preparing its job)"
        how = f"stop that process (kill {holder.get('pid', 'PID')})"
    return (f"artifact {name!r} is already being made by {what}; wait for it to finish, or "
            f"{how}")


def _holder_of_locked(path: Path, wait_s: float = 2.0) -> dict[str, Any]:
    """The holder recorded in a locked file, waiting briefly for a job that has just taken the
    lock to record its job id."""
    deadline = time.time() + wait_s
    info = _read_holder(path)
    while not info.get("job") and time.time() < deadline:
        time.sleep(0.05)
        info = _read_holder(path)
    return info


@dataclass
class NameHold:
    """The names one job holds; `record(job_id)` writes the holder's job id into the locks."""

    lab: Lab
    paths: list[Path] = field(default_factory=list)
    taken_over: list[int] = field(default_factory=list)  # ids of dead jobs whose names we took

    def record(self, job_id: int) -> None:
        for path in self.paths:
            _write_holder(_HELD[str(path)].fd, {"pid": os.getpid(), "job": job_id})


def _secondary_rank() -> bool:
    """True in a torch.distributed worker of rank > 0: rank 0 holds the names for its group
    (all ranks of one DDP run make the same artifacts)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _acquire(lab: Lab, path: Path, name: str) -> int | None:
    """Lock one name; returns the id of a dead job found holding it (taken over), if any."""
    key = str(path)
    if key in _HELD:
        _HELD[key].count += 1
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JobConflictError(_conflict_message(lab, name, _holder_of_locked(path))) from None
    previous = _read_holder(path)
    _write_holder(fd, {"pid": os.getpid(), "job": None})
    _HELD[key] = _Held(fd)
    stale = previous.get("job")
    if stale:
        row = lab.job_row(stale)
        if row is not None and row["status"] in ACTIVE:
            mark_lost(lab, row, f"took over artifact {name!r}")
            return int(stale)
    return None


def _release(path: Path) -> None:
    key = str(path)
    held = _HELD.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[key]
    try:
        _write_holder(held.fd, {})
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


@contextmanager
def hold_names(lab: Lab, names: list[str]) -> Iterator[NameHold]:
    """Hold the locks of all `names` (sorted, so two jobs never deadlock) or raise
    JobConflictError at once, holding none, when one is held by a running job."""
    hold = NameHold(lab)
    if _secondary_rank():
        yield hold
        return
    try:
        for name in sorted(set(names)):
            path = lock_path(lab, name)
            stale = _acquire(lab, path, name)
            hold.paths.append(path)
            if stale is not None:
                hold.taken_over.append(stale)
        yield hold
    finally:
        for path in reversed(hold.paths):
            _release(path)
            held = _HELD.get(str(path))
            if held is not None and held.claimed and held.count == 1:
                held.claimed = False  # the job that the claim was for is over
                _release(path)


def claim(lab: Lab, name: str) -> None:
    """Hold artifact `name` for this process from now until its job ends (or the process
    exits): called by `Lab.work_dir`, so a second start of a name is refused before it touches
    the first one's checkpoints. Raises JobConflictError when another process holds it."""
    if _secondary_rank():
        return
    path = lock_path(lab, name)
    held = _HELD.get(str(path))
    if held is not None:
        if not held.claimed:
            held.claimed = True
            held.count += 1
        return
    _acquire(lab, path, name)
    _HELD[str(path)].claimed = True


def holder(lab: Lab, name: str) -> dict[str, Any] | None:
    """The active job row holding artifact `name`, or None when it is free."""
    path = lock_path(lab, name)
    if str(path) in _HELD:
        info = _read_holder(path)
        return lab.job_row(info["job"]) if info.get("job") else None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_holder(path)
        row = lab.job_row(info["job"]) if info.get("job") else None
        return row or {"id": None, "kind": "?", "pid": info.get("pid"), "status": "running"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_free(lab: Lab, names: list[str]) -> None:
    """Raise JobConflictError naming the running job if any of `names` is held."""
    for name in names:
        row = holder(lab, name)
        if row is not None:
            raise JobConflictError(_conflict_message(lab, name, {"job": row.get("id"),
                                                                 "pid": row.get("pid")}))


# -- reconciling dead jobs --------------------------------------------------------------------
def mark_lost(lab: Lab, row: dict[str, Any], why: str = "") -> str:
    names = row.get("names") or [row["name"]]
    message = (f"its process (pid {row['pid']}) is gone (killed or crashed)"
               + (f"; {why}" if why else "") + "; checkpoints are kept in "
               + ", ".join(f"work/{n}" for n in names) + ": run the same command to resume")
    lab.set_job_status(row["id"], "lost", message, only_if_active=True)
    return message


def reconcile(lab: Lab, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark active rows whose process is gone as `lost` (updates `rows` in place)."""
    for row in rows:
        if row["status"] in ACTIVE and not pid_alive(row.get("pid")):
            if row["status"] == "starting" and time.time() - row["created"] < 10:
                continue  # launched a moment ago; its pid is being recorded
            if row["status"] == "cancelling":
                row["message"] = _cancel_message(row)
                lab.set_job_status(row["id"], "cancelled", row["message"], only_if_active=True)
                row["status"] = "cancelled"
                continue
            row["message"] = mark_lost(lab, row)
            row["status"] = "lost"
    return rows


def _cancel_message(row: dict[str, Any]) -> str:
    names = row.get("names") or [row["name"]]
    return ("cancelled by the user; checkpoints are kept in "
            + ", ".join(f"work/{n}" for n in names) + ": run the same command to resume")


# -- background jobs --------------------------------------------------------------------------
def log_path(lab: Lab, job_id: int) -> Path:
    folder = lab.root / LOGS_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"job-{job_id}.log"


def launch(lab: Lab, command: list[str], title: str, names: list[str] = (),
           env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> int:
    """Start `command` (argv) as a background job; returns its job id at once.

    names: the artifact names the command will make; a held one is refused here, before any
    process starts. The command runs in its own session (so it survives the caller, e.g. a
    dashboard reload) with $WORKBENCH_LAB and $WORKBENCH_JOB_ID set.
    """
    if not command:
        raise InvalidInputError("no command to start")
    check_free(lab, list(names))
    job_id = lab.insert_job("command", title, {"command": list(command)}, status="starting",
                            names=list(names), pid=None)
    log = log_path(lab, job_id)
    full_env = {**os.environ, **(env or {}), "WORKBENCH_LAB": str(lab.root),
                JOB_ID_ENV: str(job_id), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.jobs", "run", str(job_id)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env,
            cwd=cwd, start_new_session=True,
        )
    lab.set_job_pid(job_id, proc.pid)
    return job_id


def _last_error(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line[:500]
    return lines[-1][:500] if lines else ""


def supervise(lab: Lab, job_id: int) -> int:
    """Run background job `job_id`'s command and record how it ended (see `launch`)."""
    row = lab.job_row(job_id)
    if row is None:
        raise NotFoundError(f"no job {job_id} in lab {lab.root}")
    command = row["config"]["command"]
    lab.set_job_status(job_id, "running", "", only_if_active=True)
    # the command inherits the default SIGINT (Python turns it into KeyboardInterrupt); the
    # supervisor ignores the group's SIGINT and waits for the command to stop
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    rc = child.wait()
    row = lab.job_row(job_id) or row
    if row.get("cancel_requested"):
        lab.set_job_status(job_id, "cancelled", _cancel_message(row))
    elif rc == 0:
        lab.set_job_status(job_id, "done", "")
    else:
        lab.set_job_status(job_id, "failed",
                           _last_error(log_path(lab, job_id)) or f"exit status {rc}")
    return rc


def cancel(lab: Lab, job_id: int, timeout: float = 20.0) -> dict[str, Any]:
    """Stop job `job_id` (and its child jobs) and mark it cancelled; checkpoints are kept."""
    row = lab.job_row(job_id)
    if row is None:
        raise NotFoundError(f"no job {job_id} in lab {lab.root}; see `workbench lab jobs`")
    if row["status"] not in ACTIVE:
        raise InvalidInputError(f"job {job_id} is not running (status {row['status']})")
    lab.request_cancel(job_id)
    pid = row.get("pid")
    group = row["kind"] == "command"

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    if pid_alive(pid):
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            send(sig)
            deadline = time.time() + wait
            while pid_alive(pid) and time.time() < deadline:
                time.sleep(0.1)
            if not pid_alive(pid):
                break
    # children marked by the command itself; any left active (killed hard) are closed here
    for child in lab.jobs_of_parent(job_id):
        if child["status"] in ACTIVE:
            lab.set_job_status(child["id"], "cancelled", _cancel_message(child),
                               only_if_active=True)
    lab.set_job_status(job_id, "cancelled", _cancel_message(row), only_if_active=True)
    return lab.job_row(job_id)


def current_parent() -> int | None:
    """The background job this process runs for ($WORKBENCH_JOB_ID), if any."""
    value = os.environ.get(JOB_ID_ENV)
    return int(value) if value and value.isdigit() else None


def _main(argv: list[str]) -> int:
    from workbench.lab import Lab

    if len(argv) != 2 or argv[0] != "run" or not argv[1].isdigit():
        print("usage: python -m workbench.jobs run JOB_ID", file=sys.stderr)
        return 2
    return supervise(Lab(), int(argv[1]))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
