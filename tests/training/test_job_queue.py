"""Where a group's training stands (webapp/training/jobs.py): how many jobs train at once
and why, the runner slots and their locks, and what a waiting group is told -- its place
and when its turn should come, from how long this server's jobs took."""

from __future__ import annotations

import json
import time

from webapp.training.jobs import (
    FIXED_SECONDS,
    ORPHANED,
    JobQueue,
    estimate_seconds,
    plan_jobs,
)


def write_job(queue: JobQueue, job_id: str, **fields) -> dict:
    job = {"id": job_id, "dataset": "pens", "state": "queued", "created": "x",
           "created_ts": time.time(), "progress": {"stage": "queued"}, "history": [],
           "messages": [], "metrics": {}, "model_id": None, "error": None, "runner": None,
           "images": 60, "options": {"epochs": 12, "image_size": 160},
           "model_dir": str(queue.data_dir / "models"), **fields}
    (queue.root / job_id).mkdir(parents=True, exist_ok=True)
    (queue.root / job_id / "job.json").write_text(json.dumps(job), encoding="utf-8")
    return job


def test_one_job_at_a_time_below_four_cpus_two_from_four():
    assert plan_jobs(0, 0, cpus=2) == (1, 1)  # training gets one core: a queue
    assert plan_jobs(0, 0, cpus=8) == (2, 2)  # half the CPUs, shared by two jobs
    assert plan_jobs(3, 0, cpus=16) == (3, 2)
    assert plan_jobs(0, 4, cpus=2) == (1, 4)  # the settings win


def test_each_slot_has_its_runner_and_a_dead_runner_s_job_fails(tmp_path):
    queue = JobQueue(tmp_path, slots=2)
    first, second = queue.acquire_runner_lock(), queue.acquire_runner_lock()
    assert {first.slot, second.slot} == {0, 1}
    assert queue.acquire_runner_lock(wait=0.1) is None  # both slots have a runner
    assert not queue.free_slot()
    write_job(queue, "20260101-000000-aaaaaa", state="running",
              runner={"pid": 1, "slot": first.slot})
    write_job(queue, "20260101-000001-bbbbbb", state="running",
              runner={"pid": 2, "slot": second.slot})
    assert queue.fail_orphans() == 0  # both runners alive
    second.close()  # the second runner dies
    assert queue.free_slot()
    assert queue.fail_orphans() == 1
    assert queue.read("20260101-000001-bbbbbb")["error"] == ORPHANED
    assert queue.read("20260101-000000-aaaaaa")["state"] == "running"
    # A runner starting in a slot a job says it runs in: that job's runner is gone.
    assert queue.fail_orphans(held_slot=first.slot) == 1
    first.close()


def test_a_waiting_group_is_told_its_place_and_when_its_turn_comes(tmp_path):
    queue = JobQueue(tmp_path, slots=1)
    runner = queue.acquire_runner_lock()  # the running job's runner
    now = time.time()
    # This server's last job: 60 pictures, 6 epochs run, 30 s.
    write_job(queue, "20260101-000000-aaaaaa", state="done", created_ts=now - 600,
              duration_s=30.0, history=[{}] * 6)
    running = write_job(queue, "20260101-000001-bbbbbb", state="running",
                        created_ts=now - 20, started_ts=now - 10,
                        progress={"stage": "data"})
    write_job(queue, "20260101-000002-cccccc", created_ts=now - 5)
    write_job(queue, "20260101-000003-dddddd", created_ts=now - 1)
    jobs = {j["id"]: j for j in queue.list()}
    expected = estimate_seconds(running, [queue.read("20260101-000000-aaaaaa")])
    assert expected == 30.0  # learnt from the last job: same pictures, same epochs
    assert jobs["20260101-000001-bbbbbb"]["estimate_s"] == 30
    assert 19 <= jobs["20260101-000001-bbbbbb"]["left_s"] <= 21
    second, third = jobs["20260101-000002-cccccc"], jobs["20260101-000003-dddddd"]
    assert (second["queue_position"], third["queue_position"]) == (2, 3)
    assert 19 <= second["starts_in_s"] <= 21  # when the running one ends
    assert 49 <= third["starts_in_s"] <= 51  # ... and the one before it
    # Two slots: the first waiting job starts at once, the next when one ends.
    jobs = {j["id"]: j for j in JobQueue(tmp_path, slots=2).list()}
    assert jobs["20260101-000002-cccccc"]["starts_in_s"] == 0
    assert 19 <= jobs["20260101-000003-dddddd"]["starts_in_s"] <= 21
    runner.close()


def test_before_any_job_ran_the_estimate_is_the_measured_default():
    job = {"images": 60, "options": {"epochs": 12, "image_size": 160}}
    small = {"images": 60, "options": {"epochs": 12, "image_size": 96}}
    assert FIXED_SECONDS < estimate_seconds(small, []) < estimate_seconds(job, []) < 60
