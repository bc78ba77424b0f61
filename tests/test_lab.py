"""The lab: atomic artifacts, validated names, catalog under concurrent writers, jobs."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from workbench.errors import InvalidInputError, NotFoundError
from workbench.lab import Lab, validate_name


def test_artifact_round_trip(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "a1", parents=["p"], config={"x": 1}) as art:
        (art.path / "data.txt").write_text("hello")
        art.manifest["extra"] = 5
        art.metrics["loss"] = 0.5
    got = lab.get("a1")
    assert got.kind == "analysis"
    assert (got.path / "data.txt").read_text() == "hello"
    assert got.manifest["extra"] == 5 and got.metrics["loss"] == 0.5
    assert got.parents == ["p"] and got.config == {"x": 1}
    assert [a.name for a in lab.list("analysis")] == ["a1"]
    lab.update_metrics("a1", {"acc": 0.9})
    assert lab.get("a1").metrics == {"loss": 0.5, "acc": 0.9}
    assert json.loads((got.path / "manifest.json").read_text())["metrics"]["acc"] == 0.9


def test_failed_write_leaves_nothing_and_keeps_old(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "keep") as art:
        (art.path / "v").write_text("1")
    with pytest.raises(RuntimeError), lab.new_artifact("analysis", "keep", overwrite=True) as art:
        (art.path / "v").write_text("2")
        raise RuntimeError("crash mid-write")
    assert (lab.get("keep").path / "v").read_text() == "1"
    assert list((lab.root / "tmp").iterdir()) == []
    with pytest.raises(RuntimeError), lab.new_artifact("analysis", "never") as art:
        raise RuntimeError("crash")
    assert not lab.exists("never")
    with pytest.raises(NotFoundError, match="available: keep"):
        lab.get("never")


def test_existing_name_needs_overwrite(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "x"):
        pass
    with pytest.raises(InvalidInputError, match="already exists"), lab.new_artifact("analysis", "x"):
        pass


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".hidden", "", "x" * 101, "a..b", "/abs"])
def test_invalid_names_rejected(tmp_path, bad):
    lab = Lab(tmp_path / "lab")
    with pytest.raises(InvalidInputError, match="invalid artifact name"):
        validate_name(bad)
    with pytest.raises(InvalidInputError), lab.new_artifact("analysis", bad):
        pass
    assert not (tmp_path / "evil").exists()


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "c"):
        pass
    (lab.get("c").path / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="corrupt.*workbench lab rm c"):
        lab.get("c")


def test_kind_mismatch(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "c"):
        pass
    with pytest.raises(InvalidInputError, match="is a analysis, not a sae"):
        lab.get("c", kind="sae")


def _writer(root: str, worker: int, n: int) -> None:
    lab = Lab(root)
    for i in range(n):
        with lab.new_artifact("analysis", f"w{worker}-{i}", config={"i": i}):
            pass
        job = lab.start_job("test", f"w{worker}-{i}", total=1)
        job.update(1, force=True, value=i)
        job.finish("done")


def test_two_processes_write_catalog_at_once(tmp_path):
    root = str(tmp_path / "lab")
    Lab(root)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lab = Lab(root)
    assert len(lab.list()) == 30
    jobs = lab.jobs(limit=100)
    assert len(jobs) == 30 and all(j["status"] == "done" for j in jobs)


def test_job_context_records_failure(tmp_path):
    lab = Lab(tmp_path / "lab")
    with pytest.raises(ValueError), lab.job("train", "j", total=10) as job:
        job.update(3, force=True, loss=1.0)
        raise ValueError("boom")
    (row,) = lab.jobs("j")
    assert row["status"] == "failed" and "boom" in row["message"] and row["step"] == 3


def test_rescan_rebuilds_catalog(tmp_path):
    lab = Lab(tmp_path / "lab")
    with lab.new_artifact("analysis", "r1"):
        pass
    lab.catalog_path.unlink()
    for suffix in ("-wal", "-shm"):
        (lab.root / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    lab = Lab(lab.root)
    assert lab.list() == []
    assert lab.rescan() == 1
    assert [a.name for a in lab.list()] == ["r1"]
