"""Teach it live, for real: datasets of drawn shapes built through the admin API, real
background training jobs (``python -m webapp.jobs work``, the bundled pretrained
EfficientNet-Lite0), real models in the registry, /predict on fresh images.  Also what
must hold: one job at a time, cancelling (queued and running) leaves nothing behind, a
failing job says why, and a job whose training process died -- killed, or the server
restarted -- ends ``failed``, never "running" forever."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import requests
from PIL import Image

from testkit.admin import BEARER, TOKEN, assert_error, login
from testkit.photos import encode
from testkit.registry import leftovers
from testkit.teach import (
    LONG,
    Client,
    build,
    make_app,
    models_in,
    pid_gone,
    shape_png,
    training,
    wait_job,
    work_files,
)
from testkit.weights import FRUIT
from webapp.training.jobs import ORPHANED, TEACH_DEFAULTS

# --------------------------------------------------------------------------- the whole loop


@pytest.mark.system
def test_teach_train_activate_and_predict_on_a_real_server(start_server, tmp_path):
    """Through the admin API of a real gunicorn server whose workers restart every 25
    requests (gunicorn --max-requests): build a 3-class dataset, train with the teach
    defaults, watch the progress, find the model with its report, activate it, and
    /predict gets fresh images of each class right."""
    server = start_server("gunicorn", WEB_CONCURRENCY=2, TORCH_THREADS=1,
                          MODEL_DIR=tmp_path / "models", DATA_DIR=tmp_path / "data",
                          ADMIN_TOKEN=TOKEN, JOB_THREADS=1,
                          MAX_REQUESTS=25, MAX_REQUESTS_JITTER=0)
    server.wait_ready()
    http = requests.Session()
    http.headers.update(BEARER)
    base = server.url

    def post(url, **kwargs):
        return http.post(base + url, timeout=60, **kwargs)

    shapes = {"circle": 20, "square": 20, "triangle": 20}
    build(post, "shapes", shapes, seed=1)

    response = post("/admin/api/datasets/shapes/train", json={"name": "Shapes, taught live"})
    assert response.status_code == 202, response.text
    job_id = response.json()["job"]
    assert response.headers["Location"].endswith(f"/admin/api/jobs/{job_id}")
    assert response.json()["options"] == TEACH_DEFAULTS
    assert response.json()["classes"] == shapes

    class Http:
        def get(self, url):
            return http.get(base + url, timeout=60)

    seen: list[dict] = []
    job = wait_job(Http(), job_id, seen=seen, timeout=400)
    assert job["state"] == "done", job
    assert job["error"] is None and job["finished"] and job["progress"]["fraction"] == 1.0
    # Live progress was there to see: epochs, losses, validation accuracy, time left.
    running = [j for j in seen if j["state"] == "running" and "epoch" in j["progress"]]
    assert running, [j["progress"] for j in seen]
    assert any(j["progress"].get("eta_s") for j in running)
    assert [h["epoch"] for h in job["history"]] == list(range(1, len(job["history"]) + 1))
    assert {"train_loss", "val_loss", "val_acc"} <= set(job["history"][-1])
    assert job["metrics"]["val_accuracy"] >= 0.9
    assert job["duration_s"] > 0 and job["peak_memory_mb"] > 50
    assert len(job["metrics"]["confusion_matrix"]) == 3

    # The model is in the registry with its report, not active.
    model_id = job["model_id"]
    listing = http.get(base + "/admin/api/models", timeout=60).json()
    assert listing["active"] == "builtin"
    entry = next(m for m in listing["models"] if m["id"] == model_id)
    assert entry["name"] == "Shapes, taught live"
    assert entry["classes"] == ["circle", "square", "triangle"]
    assert entry["trained_from"]["dataset"] == "shapes"
    assert sorted(entry["report_files"]) == ["confusion.png", "curves.png", "report.json"]
    png = http.get(f"{base}/admin/api/models/{model_id}/report/confusion.png", timeout=60)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    report = http.get(f"{base}/admin/api/models/{model_id}/report", timeout=60).json()
    assert report["classes"] == ["circle", "square", "triangle"]
    assert str(tmp_path) not in json.dumps(report["data"]["root"])

    # Exactly one process trained it, once, whatever the workers did meanwhile.
    runner_log = (tmp_path / "data" / ".jobs" / "runner.log").read_text("utf-8")
    assert runner_log.count(f"running training job {job_id}") == 1
    assert models_in(tmp_path) == [model_id]
    assert work_files(tmp_path) == [] and leftovers(tmp_path / "models") == []
    assert server.log.count("Autorestarting worker") >= 2  # max-requests did restart them

    # Activate; every worker answers with it; fresh shapes are recognised.
    assert post(f"/admin/api/models/{model_id}/activate").status_code == 200
    rng = random.Random(999)
    correct = total = 0
    deadline = time.monotonic() + 30
    for shape in shapes:
        for _ in range(10):
            while True:
                body = post("/predict", files={"image": ("x.png", shape_png(shape, rng))}).json()
                if body["model"]["id"] == model_id:
                    break
                assert time.monotonic() < deadline, "the new model was not served"
                time.sleep(0.2)
            correct += body["predictions"][0]["label"] == shape
            total += 1
    assert correct / total >= 0.9, f"{correct}/{total}"


# --------------------------------------------------------------------------- failing jobs


@pytest.mark.system
def test_a_job_that_cannot_train_fails_with_the_reason(tmp_path):
    app = make_app(tmp_path)
    http = Client(app)
    build(http.post, "pens", {"pen": 3, "cup": 0})
    build(http.post, "lonely", {"pen": 3})
    job = http.post("/admin/api/datasets/pens/train").json()
    assert job["state"] == "queued"
    other = http.post("/admin/api/datasets/lonely/train").json()
    job = wait_job(http, job["id"])
    assert job["state"] == "failed" and job["model_id"] is None
    assert "'cup' has no images" in job["error"] and "at least 2" in job["error"]
    other = wait_job(http, other["id"])
    assert other["state"] == "failed" and "needs at least 2" in other["error"]
    assert "Failed:" in job["messages"][-1]
    assert models_in(tmp_path) == [] and work_files(tmp_path) == []


def test_bad_training_requests_are_refused(tmp_path):
    http = Client(make_app(tmp_path))
    build(http.post, "pens", {"pen": 2, "cup": 2})
    for options, field in (({"epochs": 0}, "epochs"), ({"strategy": "magic"}, "strategy"),
                           ({"bogus": 1}, "bogus"), ({"image_size": "big"}, "image_size"),
                           ({"name": "../x"}, "name")):
        response = http.post("/admin/api/datasets/pens/train", json=options)
        assert_error(response, 400, "bad_options")
        assert field in response.get_json()["error"]["fields"]
    response = http.client.post("/admin/api/datasets/pens/train", headers=BEARER,
                                data="[1, 2]", content_type="application/json")
    assert_error(response, 400, "bad_json")
    assert_error(http.post("/admin/api/datasets/nope/train"), 404, "unknown_dataset")
    assert_error(http.get("/admin/api/jobs/../../etc"), 404, "not_found")
    assert_error(http.get("/admin/api/jobs/20260101-000000-abcdef"), 404, "unknown_job")
    assert_error(http.delete("/admin/api/jobs/nope"), 404, "unknown_job")
    assert not (tmp_path / "data" / ".jobs").exists()  # nothing was queued


# --------------------------------------------------------------------------- cancel, queue


@pytest.mark.system
def test_one_job_at_a_time_and_cancelling_leaves_nothing_behind(tmp_path):
    app = make_app(tmp_path, JOB_SLOTS=1)  # what a machine of fewer than 4 CPUs gets
    http = Client(app)
    build(http.post, "pens", {"pen": 10, "cup": 10})
    first = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    second = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    first = wait_job(http, first["id"], until=training, timeout=120)
    runner = first["runner"]["pid"]
    # The training process: its own session (a worker restart does not take it down),
    # lower priority.
    assert os.getsid(runner) == runner != os.getsid(0)
    assert os.getpriority(os.PRIO_PROCESS, runner) == min(
        19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    # One job at a time: the second waits.
    second = http.get(f"/admin/api/jobs/{second['id']}").json()
    assert second["state"] == "queued" and second["queue_position"] == 2
    # ... and is told when its turn should come: when the running one should end.
    first = http.get(f"/admin/api/jobs/{first['id']}").json()
    assert first["estimate_s"] > 0 and first["left_s"] > 0
    assert second["starts_in_s"] > 0 and second["estimate_s"] > 0
    listed = http.get("/admin/api/jobs?dataset=pens").json()["jobs"]
    assert [j["id"] for j in listed] == [second["id"], first["id"]]

    # Cancel the queued one: at once.
    response = http.delete(f"/admin/api/jobs/{second['id']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    # Cancel the running one: asked, then done within a batch.
    response = http.delete(f"/admin/api/jobs/{first['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "running" and response.json()["cancel_requested"]
    first = wait_job(http, first["id"], timeout=60)
    assert first["state"] == "cancelled" and first["model_id"] is None
    assert "nothing was stored" in first["messages"][-1]
    assert pid_gone(runner), "the runner exits once the queue is empty"
    assert http.get(f"/admin/api/jobs/{second['id']}").json()["state"] == "cancelled"
    assert_error(http.delete(f"/admin/api/jobs/{first['id']}"), 409, "job_finished")
    # No model, no half-written file anywhere.
    assert models_in(tmp_path) == [] and leftovers(tmp_path / "models") == []
    assert work_files(tmp_path) == []


@pytest.mark.system
def test_two_groups_train_at_once_with_two_slots(tmp_path):
    """JOB_SLOTS=2 (a machine of 4 CPUs or more): a second group's job does not wait for
    the first; each runs in a process and slot of its own; both can be cancelled."""
    http = Client(make_app(tmp_path, JOB_SLOTS=2))
    build(http.post, "pens", {"pen": 6, "cup": 6})
    build(http.post, "cups", {"mug": 6, "glass": 6}, seed=1)
    first = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    second = http.post("/admin/api/datasets/cups/train", json=LONG).json()
    first = wait_job(http, first["id"], until=training, timeout=180)
    second = wait_job(http, second["id"], until=training, timeout=180)
    assert first["runner"]["pid"] != second["runner"]["pid"]
    assert {first["runner"]["slot"], second["runner"]["slot"]} == {0, 1}
    for job in (first, second):
        assert http.delete(f"/admin/api/jobs/{job['id']}").status_code == 202
    for job in (first, second):
        assert wait_job(http, job["id"], timeout=60)["state"] == "cancelled"
    assert models_in(tmp_path) == [] and work_files(tmp_path) == []


# --------------------------------------------------------------------------- restarts


@pytest.mark.system
def test_a_job_whose_training_process_died_ends_failed(tmp_path):
    """Killed runner: the next look at the job marks it failed.  Server restart: the
    starting app marks it failed before anyone asks."""
    http = Client(make_app(tmp_path))
    build(http.post, "pens", {"pen": 6, "cup": 6})

    job = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    job = wait_job(http, job["id"], until=training, timeout=120)
    os.kill(job["runner"]["pid"], signal.SIGKILL)
    assert pid_gone(job["runner"]["pid"])
    job = http.get(f"/admin/api/jobs/{job['id']}").json()
    assert job["state"] == "failed" and job["error"] == ORPHANED

    job = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    job = wait_job(http, job["id"], until=training, timeout=120)
    os.kill(job["runner"]["pid"], signal.SIGKILL)  # the machine lost power, say
    assert pid_gone(job["runner"]["pid"])
    on_disk = tmp_path / "data" / ".jobs" / job["id"] / "job.json"
    assert json.loads(on_disk.read_text("utf-8"))["state"] == "running"
    make_app(tmp_path)  # the server starts again
    stored = json.loads(on_disk.read_text("utf-8"))
    assert stored["state"] == "failed" and stored["error"] == ORPHANED

    assert models_in(tmp_path) == [] and leftovers(tmp_path / "models") == []
    assert work_files(tmp_path) == []


@pytest.mark.system
def test_a_training_process_asked_to_stop_ends_its_job_failed(tmp_path):
    http = Client(make_app(tmp_path))
    build(http.post, "pens", {"pen": 6, "cup": 6})
    job = http.post("/admin/api/datasets/pens/train", json=LONG).json()
    job = wait_job(http, job["id"], until=training, timeout=120)
    os.kill(job["runner"]["pid"], signal.SIGTERM)  # e.g. systemd stopping the service
    job = wait_job(http, job["id"], timeout=60)
    assert job["state"] == "failed" and "SIGTERM" in job["error"]
    assert pid_gone(job["runner"]["pid"])
    assert models_in(tmp_path) == [] and work_files(tmp_path) == []


@pytest.mark.system
def test_queued_jobs_are_picked_up_after_a_restart(tmp_path):
    """A job queued while no training process could start (here: the runner is stopped
    before it takes the job) is run when the server starts again."""
    http = Client(make_app(tmp_path, JOB_SLOTS=1))
    build(http.post, "pens", {"pen": 2, "cup": 0})  # fails fast: the point is it runs
    queue = http.app.extensions["jobs"]
    lock = queue.acquire_runner_lock()  # pretend a runner is busy: the new one leaves
    try:
        job = http.post("/admin/api/datasets/pens/train").json()
        time.sleep(4)  # the runner started for it gives up after RUNNER_LOCK_WAIT
        assert http.get(f"/admin/api/jobs/{job['id']}").json()["state"] == "queued"
    finally:
        lock.close()
    http = Client(make_app(tmp_path, JOB_SLOTS=1))  # restart: the queue is looked at
    job = wait_job(http, job["id"], timeout=60)
    assert job["state"] == "failed" and "'cup' has no images" in job["error"]


# --------------------------------------------------------------------------- reports


@pytest.mark.system
def test_a_model_keeps_its_training_report_in_the_registry(tmp_path, fruit_checkpoint):
    app = make_app(tmp_path)
    http = Client(app)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"classes": FRUIT, "metrics": {"val_accuracy": 0.9}}))
    png = tmp_path / "confusion.png"
    png.write_bytes(encode(Image.new("RGB", (40, 30), "navy"), "PNG"))
    registry = app.extensions["registry"]
    with pytest.raises(ValueError):
        registry.add(fruit_checkpoint, extras={"../checkpoint.pt": png})
    meta = registry.add(fruit_checkpoint, extras={"report.json": report, "confusion.png": png,
                                                  "curves.png": png},
                        trained_from={"dataset": "fruit", "job": "20260101-000000-abcdef"})
    folder = tmp_path / "models" / "models" / meta["id"]
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "confusion.png", "curves.png",
                                          "meta.json", "report.json"]
    assert meta["trained_from"]["dataset"] == "fruit"
    body = http.get(f"/admin/api/models/{meta['id']}/report").json()
    assert body["classes"] == FRUIT
    served = http.get(f"/admin/api/models/{meta['id']}/report/confusion.png")
    assert served.headers["Content-Type"] == "image/png"
    assert served.raw.data == png.read_bytes()
    for url in (f"/admin/api/models/{meta['id']}/report/meta.json",
                f"/admin/api/models/{meta['id']}/report/checkpoint.pt",
                "/admin/api/models/builtin/report"):
        assert_error(http.get(url), 404, "no_report" if "builtin" not in url else "unknown_model")
    # The model table links to the report and the dataset.
    client = app.test_client()
    login(client)
    page = client.get("/admin/").get_data(as_text=True)
    assert f"/admin/api/models/{meta['id']}/report/confusion.png" in page
    assert 'href="/admin/teach/fruit"' in page


@pytest.mark.system
def test_a_runner_that_died_right_after_storing_its_model_leaves_the_job_done(
        tmp_path, fruit_checkpoint):
    """The one instant where a killed job has a model: stored, not yet recorded.  The job
    ends done with that model, not failed with a model nobody can find."""
    app = make_app(tmp_path)
    http = Client(app)
    queue = app.extensions["jobs"]
    job_id = "20260101-000000-abcdef"
    (queue.root / job_id).mkdir(parents=True)
    job = {"id": job_id, "dataset": "fruit", "state": "running", "created": "x",
           "created_ts": 1.0, "progress": {"stage": "storing"}, "history": [],
           "messages": [], "metrics": {}, "model_id": None, "error": None,
           "runner": {"pid": 999999999}, "model_dir": str(tmp_path / "models")}
    (queue.root / job_id / "job.json").write_text(json.dumps(job))
    meta = app.extensions["registry"].add(fruit_checkpoint, trained_from={"job": job_id})
    job = http.get(f"/admin/api/jobs/{job_id}").json()
    assert job["state"] == "done" and job["model_id"] == meta["id"] and job["error"] is None
