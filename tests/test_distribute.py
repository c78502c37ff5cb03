"""Fan-out over Ray: same bytes for any worker count, crash safety, resume, failed items."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augment.config import load_spec
from augment.distribute import block_size, make_blocks, workers_to_feed
from augment.job import RunOptions, plan_for, run_job
from tests.conftest import TINY_JOB, images_by_item, run_cli

AUGMENT = str(Path(sys.executable).parent / "augment")

#: Slow enough (about 5 s of rendering on 2 cores) that a test can interrupt it mid-run:
#: 40 items in 10 blocks of 4, interrupted after two shards with eight to go (one worker left
#: by then, half a second a block).
SLOW_JOB = (
    TINY_JOB.replace("max_concepts: 3", "max_concepts: 10")
    .replace("num_inference_steps: 3", "num_inference_steps: 10")
    .replace("images_per_concept: 3", "images_per_concept: 4")
)
SLOW_ITEMS = 40


def test_blocks_are_fixed_by_the_plan_and_skip_done_items(write_job):
    items = plan_for(load_spec(write_job()))
    size = block_size(len(items), batch_size=4, rows_per_shard=100)
    assert size == 4  # whole batches; at least 16 blocks would need < 1 item each
    blocks = make_blocks(items, set(), size, first_shard_index=0)
    assert [len(b.items) for b in blocks] == [4, 4, 1]
    assert [b.shard for b in blocks] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    done = {i.item_id for i in items[:4]} | {items[5].item_id}
    resumed = make_blocks(items, done, size, first_shard_index=3)
    assert [b.shard for b in resumed] == ["part-00003.parquet", "part-00004.parquet"]
    assert [i.item_id for b in resumed for i in b.items] == [
        i.item_id for i in items if i.item_id not in done
    ]
    assert block_size(10_000, batch_size=8, rows_per_shard=100) == 104


def test_near_the_end_a_block_waits_for_the_first_free_worker():
    # the start: a block each, then a second each (one renders while one is committed)
    assert workers_to_feed([0, 0], queued=34) == [0, 1, 0, 1]
    assert workers_to_feed([1, 2], queued=10) == [0]
    # the end: one block left and both workers busy: it waits for whichever frees first,
    # rather than queueing behind one while the other may go idle
    assert workers_to_feed([1, 1], queued=1) == []
    assert workers_to_feed([1, 0], queued=1) == [1]
    assert workers_to_feed([1, 1, 1], queued=3) == [0]  # the two others stay for the rest
    assert workers_to_feed([0, 0, 0], queued=2) == [0, 1]
    assert workers_to_feed([2, 2], queued=5) == []


def test_one_and_two_ray_workers_write_identical_images(write_job, tmp_path, ray_session):
    job = write_job()
    one = run_job(load_spec(job, {"output.dir": str(tmp_path / "one")}), RunOptions(workers=1))
    two = run_job(load_spec(job, {"output.dir": str(tmp_path / "two")}), RunOptions(workers=2))
    local = run_job(
        load_spec(job, {"output.dir": str(tmp_path / "local")}),
        RunOptions(distributor="local"),
    )
    assert one.rendered == two.rendered == local.rendered == 9
    first, second, third = (images_by_item(r.out_dir) for r in (one, two, local))
    assert first.keys() == second.keys() == third.keys()
    assert all(first[k] == second[k] == third[k] for k in first)


def test_a_failing_item_is_reported_retried_and_never_stops_the_rest(
    write_job, tmp_path, monkeypatch
):
    from augment.generate import engine

    job = write_job()
    spec = load_spec(job)
    bad = plan_for(spec)[4].item_id
    original = engine.Txt2ImgGenerator.render_batch
    attempts = []

    def render_batch(self, items):
        if any(item.item_id == bad for item in items):
            attempts.append(len(items))
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, items)

    monkeypatch.setattr(engine.Txt2ImgGenerator, "render_batch", render_batch)
    result = run_job(spec, RunOptions(distributor="local", retries=2))
    assert (result.rendered, result.failed) == (8, 1)
    assert attempts == [4, 1, 1]  # the batch, then the item alone, twice
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["missing"] == 1
    (failure,) = manifest["failures"]
    assert failure["item_id"] == bad and "illegal memory access" in failure["error"]

    monkeypatch.setattr(engine.Txt2ImgGenerator, "render_batch", original)
    rerun = run_job(spec, RunOptions(distributor="local"))
    assert (rerun.skipped, rerun.rendered, rerun.failed) == (8, 1, 0)
    assert len(images_by_item(tmp_path / "out")) == 9


def start_run(job: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [AUGMENT, "run", str(job), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # our signals reach the driver only, as in a terminal's Ctrl-C
    )


def wait_for_shards(out: Path, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "shards").glob("part-*.parquet"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.2)


def assert_complete_without_duplicates(job: Path, out: Path) -> None:
    planned = {item.item_id for item in plan_for(load_spec(job))}
    ids = pq.read_table(out / "shards", columns=["item_id"]).column("item_id").to_pylist()
    assert len(ids) == len(set(ids)), "an item was committed twice"
    assert set(ids) == planned, f"{len(planned - set(ids))} items missing"
    assert not list((out / "shards").glob(".*")), "temp files left behind"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["missing"] == 0


def worker_pids(driver: subprocess.Popen) -> list[int]:
    """The driver's own Ray workers (its local Ray's processes descend from it): never those of
    another Ray on the machine, such as a test running beside this one."""
    import psutil

    pids = []
    for process in psutil.Process(driver.pid).children(recursive=True):
        try:
            if "BlockWorker" in " ".join(process.cmdline()):
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    """`kill`, a service manager or a pod stopping sends SIGTERM: the run stops as Ctrl-C stops
    it (exit 130, committed shards kept and said so), where it was killed on the spot."""
    job = tmp_path / "job.yaml"
    job.write_text(SLOW_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    driver = start_run(job, "--distributor", "local")
    wait_for_shards(tmp_path / "out", 1, driver)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    assert 0 < len(images_by_item(tmp_path / "out")) < SLOW_ITEMS


@pytest.mark.slow
def test_killed_worker_then_ctrl_c_then_rerun_gives_exactly_the_plan(tmp_path):
    """A Ray worker killed mid-run: its block goes to another and the run goes on. Ctrl-C
    then stops the driver cleanly (exit 130, committed shards kept), and the rerun renders
    exactly what is missing: nothing lost, nothing twice."""
    job = tmp_path / "job.yaml"
    job.write_text(SLOW_JOB.replace("OUT_DIR", str(tmp_path / "out")))
    out = tmp_path / "out"
    driver = start_run(job, "--workers", "2")
    wait_for_shards(out, 1, driver)
    pids = worker_pids(driver)
    assert pids, "no Ray worker process found"
    os.kill(pids[0], signal.SIGKILL)
    wait_for_shards(out, 2, driver)  # the run went on after losing a worker
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    committed = len(images_by_item(out))
    assert 0 < committed < SLOW_ITEMS
    # The rerun, in this process and on the local distributor: the same resume logic without
    # a second Ray start-up (the distributor only renders what the resume left to do).
    rerun = run_cli("run", str(job), "--distributor", "local")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{SLOW_ITEMS - committed} images rendered, {committed} already done" in rerun.stdout
    assert_complete_without_duplicates(job, out)


def test_a_head_that_stopped_answering_is_told_from_a_dead_worker():
    """A killed head made every worker "die": each was restarted and re-queued until Ray
    ended the process a minute later, exit 1, without saying the shards were kept."""
    import socket

    from augment.distribute import head_gone

    with socket.create_server(("127.0.0.1", 0)) as listening:
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not head_gone(address)
    assert head_gone(address)  # closed: nothing listens there now
