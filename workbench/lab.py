"""The lab: a folder of artifacts plus a SQLite catalog of artifacts and jobs.

Layout of a lab folder (default `./lab`, or `$WORKBENCH_LAB`, or `--lab`):

    catalog.sqlite          artifacts and jobs (WAL mode: CLI and dashboard read/write at once)
    artifacts/<name>/       one folder per artifact, with manifest.json
    work/<name>/            checkpoints of a running or interrupted job (resume from here)
    tmp/                    artifacts being written; renamed into artifacts/ when complete

An artifact is written into `tmp/` and renamed into place only when complete, so a crash never
leaves half an artifact. Names are validated so they cannot escape the lab folder.

Typical use::

    lab = Lab()
    with lab.new_artifact("corpus", "default-corpus", config=cfg) as art:
        write_files(art.path)
        art.manifest["languages"] = [...]
        art.metrics["n_docs"] = 1234
    lab.get("default-corpus").path / "train.parquet"
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import InvalidInputError, NotFoundError, WorkbenchError

ARTIFACT_KINDS = (
    "corpus",
    "tokenizer",
    "model",
    "activations",
    "probe",
    "sae",
    "steering",
    "langfir",
    "analysis",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
MANIFEST = "manifest.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]',
    config TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'ready',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}',
    message TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs(name);
CREATE TABLE IF NOT EXISTS job_points (
    job INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS job_points_job ON job_points(job);
"""
# Columns added to `jobs` after the first release (older catalogs are migrated on open).
_JOB_COLUMNS = {
    "names": "TEXT NOT NULL DEFAULT '[]'",   # every artifact name the job holds
    "parent": "INTEGER",                     # the background job that ran this one
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
}


def validate_name(name: str) -> str:
    """Return `name` if it is a safe artifact name, else raise InvalidInputError.

    Allowed: letters, digits, `_`, `-`, `.`; starts with a letter or digit; at most 100
    characters; no `..`. This keeps every artifact inside the lab folder.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidInputError(
            f"invalid artifact name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def default_lab_root() -> Path:
    """`$WORKBENCH_LAB` if set, else `./lab`."""
    return Path(os.environ.get("WORKBENCH_LAB", "lab"))


@dataclass
class Artifact:
    """One stored artifact: its catalog row plus the manifest read from its folder."""

    name: str
    kind: str
    path: Path
    parents: list[str]
    config: dict[str, Any]
    metrics: dict[str, Any]
    created: float
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "parents": self.parents,
            "config": self.config,
            "metrics": self.metrics,
            "created": self.created,
            "manifest": self.manifest,
        }


@dataclass
class ArtifactWriter:
    """Handed out by `Lab.new_artifact`: write files into `path`, add to `manifest`/`metrics`."""

    kind: str
    name: str
    path: Path
    parents: list[str]
    config: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class Lab:
    """A lab folder with its catalog. Cheap to construct; every call opens its own connection."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_lab_root()
        self.root = self.root.expanduser().resolve()
        try:
            for sub in ("artifacts", "work", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbenchError(
                f"cannot create the lab folder {self.root}: {exc.strerror}. "
                "Choose another with --lab or WORKBENCH_LAB."
            ) from exc
        with self._connect() as con:
            con.executescript(_SCHEMA)
            have = {r["name"] for r in con.execute("PRAGMA table_info(jobs)")}
            for column, decl in _JOB_COLUMNS.items():
                if column not in have:
                    try:
                        con.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
                    except sqlite3.OperationalError:  # added by another process meanwhile
                        pass

    # -- catalog plumbing -------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.catalog_path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise WorkbenchError(f"cannot open the lab catalog {self.catalog_path}: {exc}") from exc
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=60000")
            con.row_factory = sqlite3.Row
            yield con
        except sqlite3.DatabaseError as exc:
            raise WorkbenchError(
                f"the lab catalog {self.catalog_path} is unreadable ({exc}); move it away and "
                "run `workbench lab rescan` to rebuild it from the artifact folders"
            ) from exc
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- artifacts --------------------------------------------------------------------------
    def artifact_path(self, name: str) -> Path:
        return self.root / "artifacts" / validate_name(name)

    def work_dir(self, name: str) -> Path:
        """Folder for checkpoints of the job that makes artifact `name` (kept until it succeeds).

        Claims the name for this process (see `workbench.jobs.claim`): a name another running
        job holds is refused here, before its checkpoints can be touched."""
        from workbench.jobs import claim

        claim(self, validate_name(name))
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def exists(self, name: str) -> bool:
        return (self.artifact_path(name) / MANIFEST).exists()

    @contextmanager
    def new_artifact(
        self,
        kind: str,
        name: str,
        parents: list[str] | tuple[str, ...] = (),
        config: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Iterator[ArtifactWriter]:
        """Write a new artifact atomically.

        Files go into a temporary folder; on normal exit the manifest is written and the folder
        renamed into place, then the catalog row is added. On an exception the temporary folder
        is removed and an existing artifact of the same name is untouched.
        """
        if kind not in ARTIFACT_KINDS:
            raise InvalidInputError(f"unknown artifact kind {kind!r}; one of {ARTIFACT_KINDS}")
        final = self.artifact_path(name)
        if final.exists() and not overwrite:
            raise InvalidInputError(
                f"artifact {name!r} already exists in {self.root}; pick another name, "
                f"pass --overwrite, or remove it with `workbench lab rm {name}`"
            )
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        writer = ArtifactWriter(kind, name, tmp, list(parents), dict(config or {}))
        try:
            yield writer
            created = time.time()
            manifest = {
                "format_version": 1,
                "kind": kind,
                "name": name,
                "parents": writer.parents,
                "config": writer.config,
                "metrics": writer.metrics,
                "created": created,
                **writer.manifest,
            }
            _write_json(tmp / MANIFEST, manifest)
            self._swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._write() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts(name, kind, parents, config, metrics, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, kind, _dumps(writer.parents), _dumps(writer.config),
                 _dumps(writer.metrics), created),
            )

    def _swap_into_place(self, tmp: Path, final: Path) -> None:
        if final.exists():
            old = self.root / "tmp" / f"{final.name}.old.{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)

    def get(self, name: str, kind: str | None = None) -> Artifact:
        """Look up an artifact by name (optionally requiring a kind)."""
        path = self.artifact_path(name)
        manifest = self._read_manifest(name, path)
        if manifest is None:
            raise NotFoundError(self._not_found_message(name, kind))
        art = Artifact(
            name=name,
            kind=manifest.get("kind", "?"),
            path=path,
            parents=list(manifest.get("parents", [])),
            config=dict(manifest.get("config", {})),
            metrics=dict(manifest.get("metrics", {})),
            created=float(manifest.get("created", 0.0)),
            manifest=manifest,
        )
        with self._connect() as con:
            row = con.execute("SELECT metrics FROM artifacts WHERE name=?", (name,)).fetchone()
        if row is not None:
            art.metrics.update(json.loads(row["metrics"]))
        if kind is not None and art.kind != kind:
            raise InvalidInputError(f"artifact {name!r} is a {art.kind}, not a {kind}")
        return art

    def _read_manifest(self, name: str, path: Path) -> dict[str, Any] | None:
        file = path / MANIFEST
        if not file.exists():
            return None
        try:
            manifest = json.loads(file.read_text())
            if not isinstance(manifest, dict) or "kind" not in manifest:
                raise ValueError("not a manifest object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(
                f"the manifest of artifact {name!r} ({file}) is corrupt ({exc}); rebuild the "
                f"artifact or remove it with `workbench lab rm {name}`"
            ) from exc
        return manifest

    def _not_found_message(self, name: str, kind: str | None) -> str:
        names = [a["name"] for a in self._rows(kind)]
        what = kind or "artifact"
        listing = ", ".join(names[:30]) if names else "none yet"
        return f"no {what} named {name!r} in lab {self.root}; available: {listing}"

    def _rows(self, kind: str | None = None) -> list[sqlite3.Row]:
        with self._connect() as con:
            if kind is None:
                return con.execute("SELECT * FROM artifacts ORDER BY created").fetchall()
            return con.execute(
                "SELECT * FROM artifacts WHERE kind=? ORDER BY created", (kind,)
            ).fetchall()

    def list(self, kind: str | None = None) -> list[Artifact]:
        """All readable artifacts in the catalog (optionally of one kind), oldest first.
        Artifacts with a corrupt manifest are left out; `broken()` lists them."""
        return self.scan(kind)[0]

    def scan(self, kind: str | None = None) -> tuple[list[Artifact], list[dict[str, str]]]:
        """(readable artifacts, broken ones) of the catalog: one corrupt manifest never hides
        the rest. Each broken entry is {"name", "kind", "error"}, the error naming the fix."""
        out, broken = [], []
        for row in self._rows(kind):
            try:
                out.append(self.get(row["name"]))
            except NotFoundError:
                continue  # folder removed by hand; `lab rescan` drops the row
            except WorkbenchError as exc:
                broken.append({"name": row["name"], "kind": row["kind"], "error": str(exc)})
        return out, broken

    def broken(self) -> list[dict[str, str]]:
        """Catalogued artifacts whose manifest cannot be read (see `scan`)."""
        return self.scan()[1]

    def update_metrics(self, name: str, metrics: dict[str, Any]) -> None:
        """Merge `metrics` into the artifact's catalog row and its manifest (atomic rewrite)."""
        art = self.get(name)
        merged = {**art.metrics, **metrics}
        manifest = {**art.manifest, "metrics": merged}
        _write_json(art.path / MANIFEST, manifest)
        with self._write() as con:
            con.execute("UPDATE artifacts SET metrics=? WHERE name=?", (_dumps(merged), name))

    def remove(self, name: str) -> None:
        """Remove artifact `name` and its work folder (refused while a job is making it)."""
        from workbench.jobs import check_free

        path = self.artifact_path(name)
        check_free(self, [name])
        if not path.exists():
            raise NotFoundError(self._not_found_message(name, None))
        trash = self.root / "tmp" / f"{name}.rm.{uuid.uuid4().hex[:8]}"
        path.rename(trash)
        with self._write() as con:
            con.execute("DELETE FROM artifacts WHERE name=?", (name,))
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(self.root / "work" / name, ignore_errors=True)

    def rescan(self) -> int:
        """Rebuild catalog rows from the artifact folders; returns the number of artifacts."""
        count = 0
        folders = sorted((self.root / "artifacts").iterdir())
        with self._write() as con:
            con.execute("DELETE FROM artifacts")
            for folder in folders:
                try:
                    manifest = self._read_manifest(folder.name, folder)
                except InvalidInputError:
                    continue
                if manifest is None:
                    continue
                con.execute(
                    "INSERT INTO artifacts(name, kind, parents, config, metrics, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (folder.name, manifest["kind"], _dumps(manifest.get("parents", [])),
                     _dumps(manifest.get("config", {})), _dumps(manifest.get("metrics", {})),
                     float(manifest.get("created", 0.0))),
                )
                count += 1
        return count

    # -- jobs (the locking and background parts live in workbench.jobs) --------------------
    def insert_job(self, kind: str, name: str, config: dict[str, Any] | None = None,
                   total: int = 0, status: str = "running", names: list[str] | None = None,
                   pid: int | None = -1, parent: int | None = None) -> int:
        """Add a job row; returns its id (pid -1: this process)."""
        now = time.time()
        with self._write() as con:
            cur = con.execute(
                "INSERT INTO jobs(kind, name, config, status, total, pid, created, updated,"
                " names, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, name, _dumps(config or {}), status, total,
                 os.getpid() if pid == -1 else pid, now, now, _dumps(names or [name]), parent),
            )
            return int(cur.lastrowid)

    def start_job(self, kind: str, name: str, config: dict[str, Any] | None = None,
                  total: int = 0, names: list[str] | None = None) -> Job:
        """A job row for this process without name locks (`job(...)` is the safe way)."""
        from workbench.jobs import current_parent

        job_id = self.insert_job(kind, name, config, total, names=names,
                                 parent=current_parent())
        return Job(self, job_id, total)

    @contextmanager
    def job(self, kind: str, name: str, config: dict[str, Any] | None = None,
            total: int = 0, names: list[str] | tuple[str, ...] = ()) -> Iterator[Job]:
        """Run a block as a catalogued job holding artifact `name` (and `names`).

        A name held by another running job is refused at once (JobConflictError naming it);
        a dead holder's lock is taken over. Ends 'done' on success, 'cancelled' when stopped by
        `workbench lab cancel`, 'interrupted' on Ctrl+C, 'failed' otherwise; checkpoints in
        `work_dir(name)` survive all but success.
        """
        from workbench.jobs import hold_names

        held = [name, *[n for n in names if n != name]]
        with hold_names(self, held) as hold:
            job = self.start_job(kind, name, config, total, names=held)
            hold.record(job.id)
            try:
                yield job
            except KeyboardInterrupt:
                if job.cancel_requested():
                    job.finish("cancelled", "cancelled by the user; checkpoints kept: run the "
                                            "same command to resume")
                else:
                    job.finish("interrupted", "stopped by the user; run the same command to "
                                              "resume")
                raise
            except BaseException as exc:
                job.finish("failed", f"{type(exc).__name__}: {exc}")
                raise
            job.finish("done")

    def job_row(self, job_id: int) -> dict[str, Any] | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        return None if row is None else _job_dict(row)

    def job_history(self, job_id: int) -> list[dict[str, Any]]:
        """The progress points job `job_id` recorded: [{"step", "time", **metrics}], in order."""
        with self._connect() as con:
            rows = con.execute("SELECT step, time, metrics FROM job_points WHERE job=?"
                               " ORDER BY step, time", (int(job_id),)).fetchall()
        return [{"step": r["step"], "time": r["time"], **json.loads(r["metrics"])} for r in rows]

    def jobs_of_parent(self, job_id: int) -> list[dict[str, Any]]:
        with self._connect() as con:
            rows = con.execute("SELECT * FROM jobs WHERE parent=? ORDER BY id", (int(job_id),))
            return [_job_dict(r) for r in rows.fetchall()]

    def set_job_status(self, job_id: int, status: str, message: str = "",
                       only_if_active: bool = False) -> None:
        from workbench.jobs import ACTIVE

        query = "UPDATE jobs SET status=?, message=?, updated=? WHERE id=?"
        args: tuple = (status, message[:2000], time.time(), int(job_id))
        if only_if_active:
            query += f" AND status IN ({','.join('?' * len(ACTIVE))})"
            args += ACTIVE
        with self._write() as con:
            con.execute(query, args)

    def set_job_pid(self, job_id: int, pid: int) -> None:
        with self._write() as con:
            con.execute("UPDATE jobs SET pid=?, updated=? WHERE id=?",
                        (int(pid), time.time(), int(job_id)))

    def request_cancel(self, job_id: int) -> None:
        """Flag job `job_id` and its child jobs for cancelling (status 'cancelling')."""
        with self._write() as con:
            con.execute("UPDATE jobs SET cancel_requested=1, status='cancelling', updated=?"
                        " WHERE (id=? OR parent=?) AND status IN ('starting', 'running')",
                        (time.time(), int(job_id), int(job_id)))

    def jobs(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recent jobs, newest first; active jobs whose process is gone are marked 'lost'."""
        from workbench.jobs import reconcile

        with self._connect() as con:
            if name is None:
                rows = con.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = con.execute(
                    "SELECT * FROM jobs WHERE name=? ORDER BY id DESC LIMIT ?", (name, limit)
                )
            return reconcile(self, [_job_dict(r) for r in rows.fetchall()])


class Job:
    """Progress reporting for one long-running job (training, caching, sweeps)."""

    def __init__(self, lab: Lab, job_id: int, total: int, min_interval_s: float = 1.0):
        self.lab = lab
        self.id = job_id
        self.total = total
        self.min_interval_s = min_interval_s
        self._last_write = 0.0
        self.metrics: dict[str, Any] = {}

    def update(self, step: int, total: int | None = None, force: bool = False,
               **metrics: Any) -> None:
        """Record progress; writes to the catalog at most once per `min_interval_s`."""
        if total is not None:
            self.total = total
        self.metrics.update({k: _plain(v) for k, v in metrics.items()})
        now = time.time()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        with self.lab._write() as con:
            con.execute(
                "UPDATE jobs SET step=?, total=?, metrics=?, updated=? WHERE id=?",
                (int(step), int(self.total), _dumps(self.metrics), now, self.id),
            )
            if metrics:  # the curve of the job's metrics (training curves on the dashboard)
                con.execute("INSERT INTO job_points(job, step, time, metrics) VALUES (?,?,?,?)",
                            (self.id, int(step), now, _dumps(self.metrics)))

    def cancel_requested(self) -> bool:
        """Whether `workbench lab cancel` asked this job (or its background parent) to stop."""
        row = self.lab.job_row(self.id)
        if row is None:
            return False
        if row.get("cancel_requested"):
            return True
        parent = self.lab.job_row(row["parent"]) if row.get("parent") else None
        return bool(parent and parent.get("cancel_requested"))

    def finish(self, status: str = "done", message: str = "") -> None:
        with self.lab._write() as con:
            con.execute(
                "UPDATE jobs SET status=?, message=?, metrics=?, updated=? WHERE id=?",
                (status, message[:2000], _dumps(self.metrics), time.time(), self.id),
            )


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers so they serialize to JSON."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return value


def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["config"] = json.loads(out["config"])
    out["metrics"] = json.loads(out["metrics"])
    out["names"] = json.loads(out.get("names") or "[]") or [out["name"]]
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_plain)


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain))
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a clear WorkbenchError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise NotFoundError(f"{what} is missing: {path}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{what} at {path} is corrupt ({exc}); rebuild it") from exc


write_json = _write_json
