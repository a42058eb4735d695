"""The checkpoint store on disk (webapp.stores.registry), with real checkpoints: validation,
activation history, refusal of hostile and broken files, and crash safety."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

import model_loader
from testkit import ROOT
from testkit.admin import make_app
from testkit.photos import encode, photo
from testkit.registry import leftovers, snapshot
from testkit.weights import FRUIT, TOOLS, CreatesAFile, hostile_files
from webapp.engines import EngineSettings
from webapp.serving.holder import load_classifier
from webapp.stores.registry import BUILTIN, Registry, RegistryError


@pytest.fixture()
def store(tmp_path) -> Registry:
    return Registry(tmp_path / "models", ENGINE)


# The session's engine cache: a file converted once is not converted again by each test.
ENGINE = EngineSettings(cache_dir=os.environ["ENGINE_CACHE_DIR"])


def reload(store: Registry, model_id: str):
    """The stored model read again from its file and the stored facts alone (what a
    server whose engine cache was emptied converts)."""
    from webapp.engines import torch_engine

    return torch_engine.load_module(store.source(model_id))


def add(store: Registry, path, **kwargs) -> dict:
    """A trusted add, as the training runner stores its own models: built in this process
    (it has torch).  The tests of the store's logic use it; the tests of what an upload
    may contain (marked system) go through the capped child process, as uploads do."""
    return store.add(path, untrusted=False, **kwargs)


def served(store: Registry, model_id: str):
    """The stored model as a worker serves it."""
    return load_classifier({"ENGINE_CACHE_DIR": ENGINE.cache_dir, "QUANTIZE": "none"},
                           store, model_id).loaded


def test_a_finetuned_checkpoint_is_validated_and_stored_with_its_metadata(
    store, fruit_checkpoint
):
    meta = add(store, fruit_checkpoint, name="Fruit v1")
    assert meta["name"] == "Fruit v1"
    assert meta["arch"] == "resnet18"
    assert meta["classes"] == FRUIT and meta["num_classes"] == 3
    assert meta["input_size"] == 64
    assert meta["metrics"] == {"val_accuracy": 0.913, "epochs": 5}
    assert meta["size_bytes"] == fruit_checkpoint.stat().st_size
    assert meta["sha256"] == model_loader.sha256_file(fruit_checkpoint)
    assert meta["uploaded"] and meta["created"]
    # On disk: the checkpoint, byte for byte, and meta.json; nothing left in tmp/.
    folder = store.root / "models" / meta["id"]
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "meta.json"]
    assert model_loader.sha256_file(folder / "checkpoint.pt") == meta["sha256"]
    assert json.loads((folder / "meta.json").read_text("utf-8"))["classes"] == FRUIT
    assert leftovers(store.root) == []
    assert [m["id"] for m in store.list_models()] == [meta["id"]]
    # The stored model loads and predicts with its own classes.
    loaded = served(store, meta["id"])
    assert loaded.labels == FRUIT and loaded.name == "Fruit v1"
    assert loaded.version == meta["sha256"][:12]


def test_a_bare_torchvision_state_dict_is_stored_as_an_imagenet_model(store, random_resnet18):
    meta = add(store, random_resnet18)
    assert meta["arch"] == "resnet18" and meta["num_classes"] == 1000
    assert meta["classes"][:2] == ["tench", "goldfish"]
    assert meta["name"] == "resnet18 (ImageNet)"


def test_ids_are_made_by_the_server_and_identical_files_are_stored_once(
    store, fruit_checkpoint
):
    first = add(store, fruit_checkpoint, name="Fruit")
    assert first["id"] != "Fruit" and "/" not in first["id"]
    with pytest.raises(RegistryError) as info:
        add(store, fruit_checkpoint, name="Fruit again")
    assert info.value.status == 409 and first["id"] in info.value.message
    assert len(store.list_models()) == 1 and leftovers(store.root) == []


def test_activate_rollback_and_delete_keep_a_history(store, fruit_checkpoint,
                                                     tools_checkpoint):
    assert store.state().active == BUILTIN and store.pointer_stamp() is None
    fruit = add(store, fruit_checkpoint)["id"]
    tools = add(store, tools_checkpoint)["id"]
    assert {m["id"] for m in store.list_models()} == {tools, fruit}

    stamps = {store.pointer_stamp()}
    assert store.activate(fruit).active == fruit
    stamps.add(store.pointer_stamp())
    assert store.activate(tools).history == (fruit, BUILTIN)
    stamps.add(store.pointer_stamp())
    assert len(stamps) == 3  # every change is visible to a stat()

    with pytest.raises(RegistryError) as info:
        store.delete(tools)
    assert info.value.status == 409 and info.value.code == "model_active"
    with pytest.raises(RegistryError) as info:
        store.delete(BUILTIN)
    assert info.value.code == "not_deletable"

    assert store.rollback().active == fruit
    store.delete(tools)
    assert [m["id"] for m in store.list_models()] == [fruit]
    assert store.rollback().active == BUILTIN
    with pytest.raises(RegistryError) as info:
        store.rollback()
    assert info.value.status == 409 and info.value.code == "no_history"
    # Deleted models are skipped by rollback: fruit -> builtin -> (fruit deleted? no: active)
    store.activate(fruit)
    assert store.state().history == (BUILTIN,)


def test_rollback_skips_models_deleted_since(store, fruit_checkpoint, tools_checkpoint):
    fruit = add(store, fruit_checkpoint)["id"]
    tools = add(store, tools_checkpoint)["id"]
    store.activate(fruit)
    store.activate(tools)
    store.activate(BUILTIN)  # history: tools, fruit, builtin
    store.delete(tools)
    assert store.rollback().active == fruit


def test_redo_returns_to_the_models_a_rollback_left_until_a_new_activation(
        store, fruit_checkpoint, tools_checkpoint):
    fruit = add(store, fruit_checkpoint)["id"]
    tools = add(store, tools_checkpoint)["id"]
    store.activate(fruit)
    store.activate(tools)  # builtin -> fruit -> tools
    with pytest.raises(RegistryError) as info:
        store.redo()
    assert info.value.status == 409 and info.value.code == "no_redo"
    assert store.rollback().redo == (tools,)
    state = store.rollback()
    assert (state.active, state.redo) == (BUILTIN, (fruit, tools))
    state = store.redo()
    assert (state.active, state.history, state.redo) == (fruit, (BUILTIN,), (tools,))
    assert store.redo().active == tools
    assert store.rollback().active == fruit  # and round again
    # A new activation starts a new line: nothing to redo.
    assert store.activate(BUILTIN).redo == ()
    with pytest.raises(RegistryError):
        store.redo()
    # Models deleted since are skipped, like rollback does.
    store.activate(tools)  # history: builtin, fruit
    store.rollback()
    store.rollback()
    assert store.state().active == fruit and store.state().redo[:2] == (BUILTIN, tools)
    store.delete(tools)
    assert store.redo().active == BUILTIN
    with pytest.raises(RegistryError):
        store.redo()


def test_a_pointer_written_before_redo_existed_still_reads(store, fruit_checkpoint):
    fruit = add(store, fruit_checkpoint)["id"]
    store.root.mkdir(parents=True, exist_ok=True)
    store.pointer.write_text(json.dumps({"active": fruit, "history": ["builtin"],
                                         "changed": "2026-01-01T00:00:00+00:00"}))
    state = store.state()
    assert (state.active, state.history, state.redo) == (fruit, (BUILTIN,), ())
    assert store.rollback().redo == (fruit,)


def test_a_rename_changes_the_display_name_only(store, fruit_checkpoint):
    meta = add(store, fruit_checkpoint, name="Fruit")
    before = store.checkpoint_path(meta["id"]).stat().st_mtime_ns
    store.activate(meta["id"])
    stamp = store.pointer_stamp()
    renamed = store.rename(meta["id"], "  Fruit, season 2  ")
    assert renamed["name"] == "Fruit, season 2" and renamed["sha256"] == meta["sha256"]
    assert store.meta(meta["id"])["name"] == "Fruit, season 2"
    assert served(store, meta["id"]).name == "Fruit, season 2"  # what a worker shows
    assert store.checkpoint_path(meta["id"]).stat().st_mtime_ns == before
    # The active model's rename rewrites the pointer (same content): workers notice.
    assert store.pointer_stamp() != stamp and store.state().active == meta["id"]
    for bad, code in (("", "bad_name"), ("../evil", "bad_name"), ("x" * 81, "bad_name")):
        with pytest.raises(RegistryError) as info:
            store.rename(meta["id"], bad)
        assert (info.value.status, info.value.code) == (400, code)
    with pytest.raises(RegistryError) as info:
        store.rename(BUILTIN, "Mine")
    assert info.value.status == 409
    with pytest.raises(RegistryError) as info:
        store.rename("20260101-000000-abcdef", "Ghost")
    assert info.value.status == 404
    assert leftovers(store.root) == []


@pytest.mark.parametrize("model_id", [
    "../../etc/passwd", "..", "models", "/etc", "20260101-000000-abcdef/../..",
    "20260101-000000-ABCDEF", "x" * 300, "",
])
def test_ids_that_are_not_ours_never_reach_the_filesystem(store, fruit_checkpoint, model_id):
    add(store, fruit_checkpoint)
    before = snapshot(store.root)
    for call in (store.activate, store.delete, store.meta, store.source):
        with pytest.raises(RegistryError) as info:
            call(model_id)
        assert info.value.status == 404
    assert snapshot(store.root) == before


@pytest.mark.parametrize("name", [
    "../../evil", "a/b", "back\\slash", ".hidden", "tab\there", "new\nline", "x" * 81,
])
def test_names_that_look_like_paths_are_refused(store, fruit_checkpoint, name):
    with pytest.raises(RegistryError) as info:
        add(store, fruit_checkpoint, name=name)
    assert info.value.status == 400 and info.value.code == "bad_name"
    assert store.list_models() == [] and leftovers(store.root) == []


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.system
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(store, tmp_path,
                                                                  fruit_checkpoint):
    store.add(fruit_checkpoint)
    before = snapshot(store.root)
    marker = tmp_path / "pwned"
    for hostile, words in hostile_files(tmp_path, marker):
        with pytest.raises(RegistryError) as info:
            store.add(hostile)
        assert info.value.status == 422
        assert words in info.value.message
        assert not marker.exists()
    assert snapshot(store.root) == before and leftovers(store.root) == []
    # Sanity check of the test itself: a plain unpickle does create the file.
    pickle.loads(pickle.dumps(CreatesAFile(marker))).close()
    assert marker.exists()


@pytest.mark.system
def test_broken_and_foreign_files_are_refused_with_the_reason(store, tmp_path,
                                                             fruit_checkpoint):
    jpeg = tmp_path / "cat.jpg"
    jpeg.write_bytes(encode(photo("chelsea").image, "JPEG"))
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n" * 20)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(fruit_checkpoint.read_bytes()[: 5_000_000])
    wrong_head = tmp_path / "wrong-head.pt"
    obj = torch.load(fruit_checkpoint, weights_only=True)
    torch.save({**obj, "classes": TOOLS}, wrong_head)  # 3-way head, 4 class names
    not_resnet = tmp_path / "not-resnet.pt"
    torch.save({**obj, "arch": "mobilenet_v3_small"}, not_resnet)
    unknown_arch = tmp_path / "unknown-arch.pt"
    torch.save({**obj, "arch": "resnet9000"}, unknown_arch)
    nan = tmp_path / "nan.pt"
    sd = {k: (torch.full_like(v, float("nan")) if k == "fc.weight" else v)
          for k, v in obj["state_dict"].items()}
    torch.save({**obj, "state_dict": sd}, nan)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expected = {
        jpeg: "it looks like: JPEG",
        text: "not a readable PyTorch weights file",
        truncated: "not a readable PyTorch weights file",
        wrong_head: "head has 3 outputs but the checkpoint names 4 classes",
        not_resnet: "does not fit the architecture",
        unknown_arch: "unsupported or missing 'arch' 'resnet9000'",
        nan: "NaN or infinite",
        empty: "the file is empty",
    }
    for path, words in expected.items():
        with pytest.raises(RegistryError) as info:
            store.add(path, original_filename=path.name)
        assert info.value.status == 422, path
        assert words in info.value.message, (path, info.value.message)
        assert path.name in info.value.message and str(tmp_path) not in info.value.message
    assert store.list_models() == [] and leftovers(store.root) == []


def test_the_session_key_is_made_once_and_shared(tmp_path):
    keys = {Registry(tmp_path / "shared").secret_key() for _ in range(3)}
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert oct((tmp_path / "shared" / "secret_key").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("kept", [b"", b"abc\n", b"\xff\xfe not text"])
def test_an_empty_or_short_session_key_is_replaced_not_used(tmp_path, kept):
    """An empty key file made a login a 500 and a 3-character one signed every session:
    either is replaced by a new random key, the same one for every worker."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "secret_key").write_bytes(kept)
    keys = {Registry(root).secret_key() for _ in range(3)}
    assert len(keys) == 1
    key = keys.pop()
    assert len(key) == 64 and (root / "secret_key").read_text("utf-8").strip() == key


def test_a_damaged_pointer_falls_back_to_the_last_good_one_and_says_so(
        store, fruit_checkpoint, tools_checkpoint):
    """active.json cut short or garbled (a disk, a hand edit) does not silently make the
    built-in model active and lose the history: the copy written last is used, with the
    reason, and the next activation writes a whole pointer again."""
    fruit = add(store, fruit_checkpoint)["id"]
    tools = add(store, tools_checkpoint)["id"]
    store.activate(fruit)
    store.activate(tools)  # history: fruit, builtin
    whole = store.pointer.read_bytes()
    for damaged in (whole[:len(whole) // 2], b"\x00" * 40, b'{"active": 7}', b"[]"):
        store.pointer.write_bytes(damaged)
        state = store.state()
        assert (state.active, state.history) == (tools, (fruit, BUILTIN)), damaged
        assert "active.json is damaged" in state.problem and tools in state.problem
    assert store.rollback().active == fruit  # works from the last good state
    assert store.state().problem is None
    assert json.loads(store.pointer.read_text("utf-8"))["history"] == [BUILTIN]
    # Both copies gone bad: the built-in model, and the reason.
    store.pointer.write_bytes(b"{")
    store.last_good.write_bytes(b"{")
    state = store.state()
    assert state.active == BUILTIN and "no earlier copy" in state.problem


def test_leftovers_of_interrupted_writes_are_swept_at_start_up_by_age(tmp_path):
    """A crash leaves temp files beside active.json, half-built engine entries and
    uploads in tmp/; a new start removes the old ones and leaves young ones (another
    process's write in progress) alone."""
    root, cache = tmp_path / "store", tmp_path / "cache"
    for folder in (root / "tmp", cache / "openvino"):
        folder.mkdir(parents=True)
    old = [root / ".active.json.tmp-4242-deadbeef", root / "tmp" / "upload-0123456789abcdef",
           cache / ".0123.fp32.onnx.tmp-4242-1", cache / ".0123.int8.onnx.tmp-4242-1.work",
           cache / "openvino" / ".compile-x1y2"]
    young = [root / ".active.json.tmp-4343-cafebabe", root / "tmp" / "upload-fedcba9876543210"]
    for path in old + young:
        path.write_bytes(b"half")
    kept = [root / "secret_key", cache / "0123.card.json"]
    for path in kept:
        path.write_bytes(b"x" * 64)
    hours_ago = time.time() - 7 * 3600
    for path in old + kept:
        os.utime(path, (hours_ago, hours_ago))
    make_app(root, ENGINE_CACHE_DIR=str(cache))
    assert [p for p in old if p.exists()] == []
    assert all(p.exists() for p in young + kept)


@pytest.mark.system  # the builder child converts the upload
def test_a_labels_file_larger_than_a_command_line_argument_is_accepted(store,
                                                                      random_resnet18):
    """1000 class names of ~150 characters (150 KB, under the 1 MB a labels file may be):
    the builder child gets them on its stdin, not on its command line (128 KB at most)."""
    names = [f"class {n:04d}: " + "a long description of what this class shows " * 3
             for n in range(1000)]
    labels = "\n".join(names).encode("utf-8")
    assert len(labels) > 128 * 1024
    meta = store.add(random_resnet18, fields={"labels": labels})
    assert meta["classes"] == [n.strip() for n in names]


# --------------------------------------------------------------------------- crash safety

CHURN = """
import sys
from webapp.stores.registry import Registry, BUILTIN
store = Registry(sys.argv[1])
sources = sys.argv[2:]
n = 0
store.delete(store.add(sources[0], name="warm-up")["id"])  # first-call costs
print("ready", flush=True)
while True:  # add, activate, rename, roll back, redo, delete, for ever: killed outside
    meta = store.add(sources[n % len(sources)], name=f"churn {n}")
    store.activate(meta["id"])
    store.rename(meta["id"], f"renamed {n}")
    store.rollback()
    store.redo()
    store.rollback()
    store.delete(meta["id"])
    n += 1
    print(n, flush=True)
"""


@pytest.mark.system
def test_a_process_killed_at_any_point_never_leaves_a_half_written_model(
    tmp_path, fruit_checkpoint, tools_checkpoint
):
    """SIGKILL a process that adds, activates, renames, rolls back, redoes and deletes
    models in a loop, at several moments: the store always lists only complete models
    that load, and the pointer always names one of them (or the built-in model)."""
    root = tmp_path / "store"
    store = Registry(root)
    keep = add(store, fruit_checkpoint, name="keep")["id"]
    store.activate(keep)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # One round (copy 45 MB, validate, store, activate, roll back, delete) takes
    # about 0.35 s here; these delays land in different steps of it.
    delays = [0.03, 0.12, 0.25, 0.4]
    for delay in delays:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHURN, str(root), str(tools_checkpoint)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        listed = store.list_models()
        for meta in listed:
            folder = root / "models" / meta["id"]
            assert (folder / "checkpoint.pt").stat().st_size == meta["size_bytes"]
            assert model_loader.sha256_file(folder / "checkpoint.pt") == meta["sha256"]
        state = store.state()
        assert state.active in {m["id"] for m in listed} | {BUILTIN}
        # Clean up what the killed process was doing (as an admin would): the model it
        # had made active too, or the next round's first upload of it is a duplicate.
        if state.active != keep:
            store.activate(keep)
        for meta in listed:
            if meta["id"] != keep:
                store.delete(meta["id"])
    # A pointer write cut short leaves only a temp file; the pointer is unchanged.
    (root / ".active.json.tmp-99999-dead").write_text('{"active": "2026')
    assert store.state().active == keep
    # A model half-built in tmp/ is never listed; the next writer sweeps old leftovers.
    half = root / "tmp" / "20260101-000000-abcdef.staging"
    half.mkdir(parents=True, exist_ok=True)
    (half / "checkpoint.pt").write_bytes(b"PK\x03\x04 half")
    assert "20260101-000000-abcdef" not in {m["id"] for m in store.list_models()}
    old = time.time() - 7 * 3600
    for path in (root / "tmp").iterdir():
        os.utime(path, (old, old))
    assert store.sweep() >= 1
    assert leftovers(root) == []
    assert served(store, keep).labels == FRUIT



@pytest.mark.system
def test_what_the_person_said_is_stored_and_the_model_loads_the_same_way_later(
    store, model_files
):
    """Class names given with an upload live in meta.json (the file does not carry them);
    safetensors and ONNX files keep a name that says what they are."""
    bare = model_files.bare
    meta = store.add(bare.path, fields={"classes": bare.fields["classes"], "arch": "auto"})
    folder = store.root / "models" / meta["id"]
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "meta.json"]
    assert (meta["kind"], meta["file"], meta["classes"]) == ("pytorch", "checkpoint.pt",
                                                            bare.classes)
    assert meta["found"] == {"kind": "pytorch", "arch_from": "detected",
                             "classes_from": "the classes field"}
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["input_size"] == 224
    assert reload(store, meta["id"]).labels == bare.classes  # no fields this time

    meta = store.add(model_files.safetensors.path)
    assert meta["file"] == "model.safetensors" and meta["kind"] == "safetensors"
    assert reload(store, meta["id"]).arch == "resnet18"

    onnx_file = model_files.onnx
    meta = store.add(onnx_file.path, fields=onnx_file.fields)
    folder = store.root / "models" / meta["id"]
    assert sorted(os.listdir(folder)) == ["meta.json", "model.onnx"]
    assert (meta["kind"], meta["arch"], meta["input_size"], meta["std"]) == (
        "onnx", "onnx", 160, [0.25, 0.25, 0.25])
    loaded = reload(store, meta["id"])
    assert loaded.module is None and loaded.onnx_path == folder / "model.onnx"
    assert (loaded.labels, loaded.mean) == (onnx_file.classes, (0.5, 0.5, 0.5))
    assert leftovers(store.root) == []


@pytest.mark.system
def test_an_unknown_architecture_is_a_400_and_auto_is_not(store, model_files):
    with pytest.raises(RegistryError) as info:
        store.add(model_files.bare.path, fields={"arch": "resnet9000", "classes": "a,b,c,d,e"})
    assert info.value.status == 400 and "auto, alexnet" in info.value.message
    with pytest.raises(RegistryError) as info:
        store.add(model_files.bare.path, fields={"arch": "auto"})  # no class names
    assert info.value.status == 422 and "give the 5 class names" in info.value.message
    assert store.list_models() == [] and leftovers(store.root) == []


def test_worker_reports_ignore_processes_that_are_gone(tmp_path):
    """What activate's wait reads: this process's report counts; a file of a process that
    is gone, or whose pid now belongs to a process started at another time, is removed."""
    from webapp.serving.workers import NotServing, WorkerReports, run_dir

    reports = WorkerReports(tmp_path / "run")
    with pytest.raises(NotServing, match="No server process"):
        reports.wait_for("builtin", 0.2)
    reports.report("builtin")
    assert reports.serving() == {os.getpid(): "builtin"}
    (tmp_path / "run" / "4194000.json").write_text(
        json.dumps({"pid": 4194000, "started": "1", "model": "old"}), "utf-8")
    (tmp_path / "run" / "1.json").write_text(  # pid 1 lives, but started at another time
        json.dumps({"pid": 1, "started": "-5", "model": "old"}), "utf-8")
    assert reports.wait_for("builtin", 1.0) == {os.getpid(): "builtin"}
    assert sorted(os.listdir(tmp_path / "run")) == [f"{os.getpid()}.json"]
    with pytest.raises(NotServing, match="1 of 1 worker"):
        reports.wait_for("20990101-000000-abcdef", 0.2)
    # The default folder is the same for every process using one MODEL_DIR.
    assert run_dir({"MODEL_DIR": str(tmp_path / "m")}) == run_dir(
        {"MODEL_DIR": str(tmp_path / "m") + "/"})
    assert run_dir({"MODEL_DIR": "a"}) != run_dir({"MODEL_DIR": "b"})
