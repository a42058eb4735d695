"""Inference engines (webapp/engines): every engine serves the card the builder made, gives
the same top-1 as the torch fp32 model on real photos with the bundled ImageNet model,
takes batches of any size, serves checkpoints of other class counts and input sizes, and
reuses its on-disk cache across restarts (a damaged entry is rebuilt, never trusted)."""

from __future__ import annotations

import os
import re
import sys
import time

import numpy as np
import pytest
import torch

import model_loader
from testkit import ROOT, ops
from testkit.photos import real_photos
from testkit.weights import save_random_resnet18
from webapp import engines
from webapp.engines import EngineSettings, build, runtime, torch_engine
from webapp.engines.calibration import calibration_arrays, calibration_files
from webapp.serving.classifier import Classifier

ENGINE_MODES = [
    ("torch", "none"), ("torch", "dynamic"),
    ("onnxruntime", "none"), ("onnxruntime", "static"),
    ("openvino", "none"), ("openvino", "bf16"), ("openvino", "static"),
]


def settings(engine="openvino", quantize="none", cache=None, **extra) -> EngineSettings:
    return EngineSettings(engine=engine, quantize=quantize, cache_dir=str(cache or ""),
                          threads=2, **extra)


def serve_file(path, engine="openvino", quantize="none", cache=None, **extra) -> Classifier:
    """A checkpoint file served the way a stored model is."""
    source = engines.checkpoint_source(path)
    card, engine_ = engines.serve(source, settings(engine, quantize, cache, **extra))
    return Classifier(card, engine_)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def bundled():
    return model_loader.load_bundled()


@pytest.fixture(scope="module")
def bundled_source():
    return engines.builtin_source({})


@pytest.fixture(scope="module")
def photo_batch(bundled):
    card = engines.ModelCard(key="-", name="", arch="", labels=[], version="", source="",
                             source_kind="", mean=bundled.mean, std=bundled.std)
    batch = np.stack([Classifier(card, None).preprocess(p.image) for p in real_photos()])
    with torch.inference_mode():
        reference = bundled.module(torch.from_numpy(batch)).numpy()
    return batch, reference


@pytest.mark.parametrize("engine, mode", ENGINE_MODES)
def test_every_engine_agrees_with_fp32_on_real_photos(bundled_source, photo_batch, cache_dir,
                                                      engine, mode):
    batch, reference = photo_batch
    card, served = engines.serve(bundled_source, settings(engine, mode, cache_dir))
    assert (card.engine_name, card.quantization) == (engine, mode)
    assert "fallback" not in served.info
    logits, features = served(batch)
    single, _ = served(batch[:1])
    assert logits.shape == (len(real_photos()), 1000)
    assert features is None or features.shape[:2] == (len(real_photos()), 1280)
    names = [p.name for p in real_photos()]
    got = dict(zip(names, logits.argmax(1).tolist()))
    want = dict(zip(names, reference.argmax(1).tolist()))
    # The photos whose fp32 answer is clear-cut must keep it; int8 and bf16 may swap the
    # near-ties (two cat breeds 0.40 vs 0.35), which docs/speed.md's agreement numbers count.
    probs = torch.softmax(torch.from_numpy(reference), 1).topk(2, 1).values
    clear = {n for n, (a, b) in zip(names, probs.tolist()) if a - b > 0.1}
    assert len(clear) >= 4
    assert {n: got[n] for n in clear} == {n: want[n] for n in clear}
    if mode in ("none", "dynamic"):
        assert got == want
    # A batch of one gives the same answer as the same image inside a batch of seven.
    tolerance = 0.05 if mode == "bf16" else 1e-3
    assert np.allclose(single[0], logits[0], atol=tolerance * float(np.abs(logits).max()))
    if mode == "bf16":
        assert served.precision == (
            "bf16" if runtime.cpu_has_bf16() else "fp32 (this CPU has no native bf16)")


@pytest.mark.slow
def test_torch_static_serves_a_resnet18_checkpoint(tmp_path, cache_dir):
    """Static int8 with torch (FX graph mode) on a fine-tuned checkpoint of another class
    count and input size; the engine answers like the fp32 module."""
    torch.manual_seed(0)
    module = model_loader.build_model("resnet18", 3)
    path = model_loader.save_checkpoint(tmp_path / "three.pt", module, arch="resnet18",
                                        classes=["a", "b", "c"], input_size=96)
    served = serve_file(path, "torch", "static", cache_dir)
    assert served.loaded.engine_info["precision"] == "int8"
    batch = np.concatenate(calibration_arrays(calibration_files(), 96,
                                              model_loader.IMAGENET_MEAN,
                                              model_loader.IMAGENET_STD)[:6])
    logits, _ = served.run(batch)
    with torch.inference_mode():
        reference = module.eval()(torch.from_numpy(batch)).numpy()
    assert logits.shape == (6, 3)
    assert np.corrcoef(logits.flatten(), reference.flatten())[0, 1] > 0.9


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("arch, classes, size", [("resnet18", 3, 64),
                                                  ("mobilenet_v3_small", 5, 160)])
@pytest.mark.slow
def test_engines_serve_checkpoints_of_other_shapes(tmp_path, cache_dir, engine, arch, classes,
                                                   size):
    torch.manual_seed(1)
    module = model_loader.build_model(arch, classes)
    path = model_loader.save_checkpoint(
        tmp_path / "ckpt.pt", module, arch=arch, classes=[f"c{i}" for i in range(classes)],
        input_size=size)
    served = serve_file(path, engine, "none", cache_dir)
    batch = np.random.default_rng(0).standard_normal((4, 3, size, size), dtype=np.float32)
    out, _ = served.run(batch)
    with torch.inference_mode():
        ref = module.eval()(torch.from_numpy(batch)).numpy()
    assert out.shape == (4, classes)
    assert np.allclose(out, ref, rtol=1e-3, atol=1e-3)
    int8 = serve_file(path, engine, "static", cache_dir)
    assert int8.loaded.engine_info["precision"] == "int8"
    assert int8.run(batch)[0].shape == (4, classes)


def _entries(cache_dir, suffix):
    return sorted(p for p in cache_dir.iterdir() if p.name.endswith(suffix))


@pytest.mark.slow
def test_cache_is_reused_after_a_restart_and_a_damaged_entry_is_rebuilt(bundled_source,
                                                                        tmp_path):
    cache = tmp_path / "cache"
    engines.serve(bundled_source, settings("onnxruntime", "static", cache))
    (int8,) = _entries(cache, ".int8.onnx")
    (fp32,) = _entries(cache, ".fp32.onnx")
    (card,) = _entries(cache, ".card.json")
    stamps = {p: p.stat().st_mtime_ns for p in (int8, fp32, card)}

    # A "restart": the same weights file found again, another engine: nothing is built.
    again_card, again = engines.serve(engines.builtin_source({}),
                                      settings("openvino", "static", cache))
    assert again.info["artefact"] == int8.name
    assert {p: p.stat().st_mtime_ns for p in (int8, fp32, card)} == stamps

    # A damaged entry (a flipped byte, then a truncated file) is rebuilt, not trusted.
    data = bytearray(int8.read_bytes())
    data[len(data) // 2] ^= 0xFF
    int8.write_bytes(bytes(data))
    engines.serve(bundled_source, settings("openvino", "static", cache))
    sidecar = cache / (int8.name + ".sha256")
    assert model_loader.sha256_file(int8) == sidecar.read_text("utf-8").strip()
    assert int8.stat().st_mtime_ns != stamps[int8]
    fp32.write_bytes(fp32.read_bytes()[:1000])
    rebuilt_card, rebuilt = engines.serve(bundled_source, settings("onnxruntime", "none", cache))
    sidecar = cache / (fp32.name + ".sha256")
    assert model_loader.sha256_file(fp32) == sidecar.read_text("utf-8").strip()
    logits, features = rebuilt(np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert logits.shape == (1, 1000) and features.shape == (1, 1280, 7, 7)

    # Other weights get their own entry.
    other = save_random_resnet18(tmp_path / "other.pth")
    engines.serve(engines.builtin_source({"MODEL_WEIGHTS": str(other)}),
                  settings("onnxruntime", "none", cache))
    assert len(_entries(cache, ".fp32.onnx")) == 2


@pytest.mark.slow
def test_torch_static_cache_is_reused(tmp_path):
    torch.manual_seed(2)
    module = model_loader.build_model("resnet18", 4)
    path = model_loader.save_checkpoint(tmp_path / "four.pt", module, arch="resnet18",
                                        classes=list("abcd"), input_size=64)
    cache = tmp_path / "cache"
    first = serve_file(path, "torch", "static", cache)
    (observers,) = _entries(cache, "-observers.pt")
    stamp = observers.stat().st_mtime_ns
    second = serve_file(path, "torch", "static", cache)
    assert observers.stat().st_mtime_ns == stamp
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
    assert np.array_equal(first.run(x)[0], second.run(x)[0])
    observers.write_bytes(b"not a torch file")
    third = serve_file(path, "torch", "static", cache)
    assert np.array_equal(third.run(x)[0], first.run(x)[0])


@pytest.mark.slow
def test_prequantized_resnet18_is_used_only_for_the_published_weights(tmp_path, monkeypatch):
    """torchvision's ResNet18_QuantizedWeights cannot be downloaded here: the test writes a
    file in the same format (a randomly initialised quantized ResNet18's state_dict) where
    torchvision caches it.  It serves the published fp32 weights only -- for any other
    ResNet18 (fine-tuned, random) int8 is calibrated from that model's own weights."""
    from torchvision.models import quantization as tvq

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.backends.quantized.engine = "fbgemm"
    torch.manual_seed(3)
    reference = tvq.resnet18(weights=None, quantize=True).eval()
    target = torch_engine.prequantized_resnet18_path()
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    loaded = model_loader.load_checkpoint(save_random_resnet18(tmp_path / "r18.pth"))
    cache = settings("torch", "static", tmp_path / "c")
    card = build.build_card(loaded, build.weights_key(loaded), cache.cache)
    _, calibrated = torch_engine.serve_module(card, loaded, cache)
    assert not isinstance(calibrated.module, type(reference))

    # The same model, as if its file were the published one (its sha256 prefix).
    loaded.version = "f37072fd1234"
    _, served = torch_engine.serve_module(card, loaded, cache)
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        assert np.array_equal(served(x)[0], reference(torch.from_numpy(x)).numpy())


@pytest.mark.slow
def test_int8_that_cannot_be_built_is_served_in_fp32_by_the_same_engine(bundled_source,
                                                                          tmp_path):
    """No calibration photos: the engine steps down to fp32 (it does not leave for torch)
    and says why."""
    broken = tmp_path / "calibration"
    broken.mkdir()
    (broken / "note.txt").write_text("no images here")
    card, served = engines.serve(bundled_source, settings(
        "openvino", "static", tmp_path / "c", calibration_dir=str(broken)))
    assert served.name == "openvino" and served.precision == "fp32"
    assert "no calibration images" in served.info["fallback"]


@pytest.mark.parametrize("engine, mode, words", [
    ("openvino", "dynamic", "needs ENGINE=torch"),
    ("tensorrt", "static", "ENGINE='tensorrt' is not supported"),
    ("torch", "int4", "QUANTIZE='int4' is not supported"),
    ("onnxruntime", "bf16", "QUANTIZE=bf16 needs ENGINE=openvino"),
])
def test_bad_combinations_are_refused(bundled_source, engine, mode, words):
    with pytest.raises(model_loader.ModelLoadError, match=re.escape(words)):
        engines.serve(bundled_source, settings(engine, mode))


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as fh:
        return fh.read()


def _workers(server) -> list[int]:
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


@pytest.mark.system
def test_the_gunicorn_master_never_loads_torch_or_openvino(start_server, tmp_path):
    """Fork after OpenMP/TBB started can hang a worker: only workers may load them.  And
    with ENGINE=torch the workers load torch (the one setting that does)."""
    server = start_server("gunicorn", ENGINE_CACHE_DIR=tmp_path / "cache", WEB_CONCURRENCY=2,
                          TORCH_THREADS=1, ENGINE="torch", QUANTIZE="dynamic")
    info = server.wait_ready(timeout=300)
    assert info["engine"]["engine"] == info["model"]["engine"] == "torch"
    for library in ("libtorch", "libopenvino", "libonnxruntime", "libgomp", "libiomp"):
        assert library not in _maps(server.proc.pid), f"the gunicorn master loaded {library}"
    workers = _workers(server)
    assert len(workers) == 2
    assert "libtorch" in _maps(workers[0])
    assert sys.platform.startswith("linux") and os.path.exists(f"/proc/{workers[0]}")


# --------------------------------------------------------------------------- QUANTIZE=auto


def _auto(source, cache, **extra):
    return engines.serve(source, settings("openvino", "auto", cache, **extra))


def test_auto_asks_the_engine_and_keeps_what_it_tried(bundled_source, cache_dir):
    """Each candidate is built, compiled, run and timed; the one served is the fastest
    that works and answers like fp32 on the clear-cut guard answers (a reduced precision
    only when clearly faster than fp32).  The decision is made once per model and
    machine (cached), and says why."""
    card, served = _auto(bundled_source, cache_dir)
    made = served.info["auto"]
    tried = {t["precision"]: t for t in made["tried"]}
    assert set(tried) == {"fp32", "int8", "bf16"}
    assert made["engine"] == "openvino" and {t["engine"] for t in made["tried"]} == {"openvino"}
    assert "views of the calibration photos" in made["guard"]
    assert made["guard_source"] == "calibration" and made["guard_views"] > 0
    assert served.precision == made["chosen"] or (
        made["chosen"] == "fp32" and served.precision == "fp32")
    chosen = tried[made["chosen"]]
    if made["chosen"] != "fp32":
        assert chosen["agreement"] >= 0.98 and chosen["ms"] <= 0.9 * tried["fp32"]["ms"]
    for name, entry in tried.items():  # every other candidate says why it was not taken
        if name != made["chosen"]:
            assert entry.get("rejected") if entry.get("works") else entry["reason"]
            assert entry.get("verdict") in (
                {"disagrees", "moves_scores", "not_faster", "slower"} if entry.get("works")
                else {None})
            assert name in made["why"]
        elif made["chosen"] != "fp32":  # the fastest that passed
            assert all(chosen["ms"] <= t["ms"] for t in tried.values()
                       if t.get("works") and "rejected" not in t)
    decision_file = cache_dir / engines.decision_name(card.key, settings("openvino", "auto"))
    stamp = decision_file.stat().st_mtime_ns
    _auto(bundled_source, cache_dir)
    assert decision_file.stat().st_mtime_ns == stamp  # not measured again


@pytest.mark.slow
def test_auto_judges_a_finetuned_model_on_its_own_validation_images(tmp_path):
    torch.manual_seed(4)
    module = model_loader.build_model("resnet18", 3)
    arrays = np.concatenate(calibration_arrays(calibration_files(), 64,
                                               model_loader.IMAGENET_MEAN,
                                               model_loader.IMAGENET_STD)[:12])
    mean = np.asarray(model_loader.IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(model_loader.IMAGENET_STD, np.float32)[:, None, None]
    guard = np.clip(np.round((arrays * std + mean) * 255), 0, 255).astype(np.uint8)
    path = model_loader.save_checkpoint(tmp_path / "guarded.pt", module, arch="resnet18",
                                        classes=["a", "b", "c"], input_size=64, guard=guard)
    assert model_loader.load_checkpoint(path).guard.shape == (12, 3, 64, 64)
    _, served = _auto(engines.checkpoint_source(path), tmp_path / "cache")
    assert "the model's own validation images" in served.info["auto"]["guard"]
    assert "12" in served.info["auto"]["guard"]


def _decided(module, labels, tmp_path, **extra) -> dict:
    """QUANTIZE=auto's decision for an in-memory model (built into a fresh cache)."""
    from webapp.engines import precision

    loaded = model_loader.LoadedModel(module=module.eval(), arch="resnet50", labels=labels,
                                      name="m", version="0", source="memory",
                                      source_kind="checkpoint")
    chosen = settings("openvino", "auto", tmp_path / "cache", **extra)
    card = build.build_card(loaded, build.weights_key(loaded), chosen.cache)
    return precision.decide(card, chosen.cache, chosen)


@pytest.mark.slow
def test_auto_refuses_int8_that_keeps_the_top1_but_moves_the_scores(tmp_path):
    """A ResNet50 whose int8 network gives fp32's top-1 on every guard image but moves
    a probability by more than PRECISION_MAX_SCORE_CHANGE allows: refused, and the
    decision says by how much."""
    from testkit.model_files import random_model

    made = _decided(random_model("resnet50", 5, seed=1), list("abcde"), tmp_path,
                    max_score_change=0.002)
    int8 = next(t for t in made["tried"] if t["precision"] == "int8")
    assert int8["works"] and int8["agreement"] >= 0.98, int8
    assert int8["max_score_change"] > 0.002 and int8["max_score_change"] >= int8["score_change"]
    assert "moves a probability by up to" in int8["rejected"]
    assert "over 0.002" in int8["rejected"]
    assert int8["verdict"] == "moves_scores"
    assert made["chosen"] != "int8" and made["max_score_change"] == 0.002
    if made["chosen"] == "fp32":
        assert "int8 moves a probability" in made["why"]


@pytest.mark.slow
def test_a_failed_precision_trial_is_reported_as_failed(tmp_path):
    """int8 that cannot be built (no calibration photos here) is a failure with its
    reason in the decision, not "not faster"."""
    empty = tmp_path / "no-photos"
    empty.mkdir()
    torch.manual_seed(2)
    made = _decided(model_loader.build_model("resnet18", 3), ["a", "b", "c"], tmp_path,
                    calibration_dir=str(empty))
    int8 = next(t for t in made["tried"] if t["precision"] == "int8")
    assert not int8["works"] and "no calibration images" in int8["reason"]
    if made["chosen"] == "fp32":
        assert "int8 failed (no calibration images" in made["why"], made["why"]
        assert "faster" not in made["why"]


@pytest.mark.system
def test_auto_on_a_common_cpu_without_bf16_still_serves(tmp_path):
    """oneDNN capped at AVX2 (no bf16, no AMX, as on most school and office PCs): bf16 is
    tried and not served, and the server still answers."""
    import json
    import subprocess

    code = """
import json, sys
from webapp import engines
from webapp.engines import EngineSettings
card, engine = engines.serve(engines.builtin_source({}), EngineSettings(
    quantize="auto", cache_dir=sys.argv[1], threads=2))
print(json.dumps({"precision": engine.precision, "auto": engine.info["auto"],
                  "shape": list(engine(__import__("numpy").zeros((1, 3, 224, 224),
                                                                  "float32"))[0].shape)}))
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code, os.environ["ENGINE_CACHE_DIR"]],
                          capture_output=True, text=True, env=env, timeout=900,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 1000]
    assert result["auto"]["chosen"] != "bf16"
    bf16 = next(t for t in result["auto"]["tried"] if t["precision"] == "bf16")
    assert not bf16["works"] or bf16.get("rejected"), bf16



# --------------------------------------------------------------------------- reliability

FIRST_INFERENCES = """
import sys, threading
import numpy as np
from pathlib import Path
from webapp.engines import runtime
engine = runtime.open_engine(Path(sys.argv[1]), "openvino", 2, "fp32", dual=True)
assert engine.compiled.wait(120), "the second network never compiled"
barrier = threading.Barrier(4)
def infer():
    barrier.wait()
    assert engine(np.zeros((1, 3, 224, 224), np.float32))[0].shape == (1, 1000)
threads = [threading.Thread(target=infer) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("answered")
"""


@pytest.mark.system
def test_a_fresh_process_answers_its_first_inferences_on_four_threads_at_once(
        bundled_source):
    """OpenVINO's Python module deadlocks when two threads turn their first inference
    results into NumPy arrays at once (docs/operating.md): without the warm-up, 9 of 10
    such processes hung.  Each engine runs once before any thread may use it, so a new
    process with four requests arriving together answers all four -- every time."""
    import subprocess

    card = engines.ensure_card(bundled_source, settings())
    network = engines.EngineSettings().cache.path(card.onnx)
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", FIRST_INFERENCES, str(network)],
                              capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert done.returncode == 0 and "answered" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_an_undecodable_sidecar_or_another_models_entry_is_rebuilt_not_served(
        bundled_source, cache_dir):
    """Bytes that are not even text in a sidecar, and the entries of another model copied
    over this one's (sidecars included): either way the entry is not served as it is but
    rebuilt as this model's, and the model answers."""
    cache = engines.EngineSettings(cache_dir=str(cache_dir)).cache
    card = engines.ensure_card(bundled_source, settings(cache=cache_dir))
    sidecar = cache.path(card.onnx + ".sha256")
    sidecar.write_bytes(b"\xff\xfe" + sidecar.read_bytes()[2:])
    assert not cache.valid(card.onnx)

    # Another model's card (its own key inside) copied over this model's, sidecar too.
    other = engines.ModelCard(**{**{k: getattr(card, k) for k in card.STORED},
                                 "key": "0" * 32, "version": "feedfacecafe"})
    cache.write_card(other)
    name = cache.card_name(card.key)
    cache.path(name).write_bytes(cache.path(cache.card_name(other.key)).read_bytes())
    cache.path(name + ".sha256").write_bytes(
        cache.path(cache.card_name(other.key) + ".sha256").read_bytes())
    assert cache.read_card(card.key) is None  # not this model's card

    served_card, engine = engines.serve(bundled_source, settings(cache=cache_dir))
    assert served_card.key == card.key and served_card.version == bundled_source.sha256[:12]
    assert cache.valid(card.onnx) and cache.read_card(card.key).key == card.key
    assert engine(np.zeros((1, 3, 224, 224), np.float32))[0].shape == (1, 1000)


@pytest.mark.slow
def test_a_card_of_another_version_of_the_file_is_not_served(bundled_source, cache_dir):
    """A card whose model-file version is not the file's (an entry made for other
    weights under this key) is rebuilt before it is used."""
    cache = engines.EngineSettings(cache_dir=str(cache_dir)).cache
    card = engines.ensure_card(bundled_source, settings(cache=cache_dir))
    cache.write_card(engines.ModelCard(**{**{k: getattr(card, k) for k in card.STORED},
                                          "version": "0123456789ab"}))
    assert cache.read_card(card.key, bundled_source.sha256[:12]) is None
    again = engines.ensure_card(bundled_source, settings(cache=cache_dir))
    assert again.version == bundled_source.sha256[:12]


@pytest.mark.slow
def test_a_damaged_compiled_network_blob_is_replaced_and_the_precision_kept(
        bundled_source, cache_dir):
    """OpenVINO's own cache of compiled networks: a blob cut short (a crash while it was
    written) costs one compilation; the network is served in the precision asked for and
    the blob is whole again afterwards."""
    from pathlib import Path

    card = engines.ensure_card(bundled_source, settings(cache=cache_dir))
    network = Path(cache_dir) / card.onnx
    blobs = Path(cache_dir) / "blobs-test"
    runtime.open_engine(network, "openvino", 2, "fp32", blobs=str(blobs))
    (blob,) = blobs.glob("*.blob")
    size = blob.stat().st_size
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:size // 3])
    engine = runtime.open_engine(network, "openvino", 2, "fp32", blobs=str(blobs))
    assert engine.precision == "fp32"
    assert engine(np.zeros((1, 3, 224, 224), np.float32))[0].shape == (1, 1000)
    assert blob.stat().st_size > size * 0.9  # written whole again (not byte for byte)


def test_an_unwritable_engine_cache_is_named_in_the_error(bundled_source, tmp_path):
    """A model the cache does not hold yet cannot be converted into a cache that cannot
    be written: the error says so and names ENGINE_CACHE_DIR (not the model file)."""
    from webapp.engines.artefacts import EngineCacheError

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be", "utf-8")
    with pytest.raises(EngineCacheError, match="ENGINE_CACHE_DIR") as caught:
        engines.ensure_card(bundled_source, settings(cache=blocked / "engines"))
    assert not caught.value.full


# --------------------------------------------------------------------------- ENGINE=auto


@pytest.mark.slow
@pytest.mark.parametrize("slowed, winner", [("openvino", "onnxruntime"),
                                            ("onnxruntime", "openvino")])
def test_auto_chooses_the_engine_that_measures_faster(bundled_source, cache_dir, slowed,
                                                      winner):
    """ENGINE=auto QUANTIZE=none times OpenVINO and ONNX Runtime on the same fp32 network;
    with one of them made slower for real (AUTO_HANDICAP_MS sleeps in its timed passes)
    the other is chosen and served, and the decision shows both timings and why."""
    chosen = settings("auto", "none", cache_dir, handicap=f"{slowed}:fp32=40")
    card, served = engines.serve(bundled_source, chosen)
    made = served.info["auto"]
    assert (made["engine"], made["chosen"]) == (winner, "fp32")
    assert served.name == winner and served.info["engine"] == winner
    assert card.engine_name == winner and card.quantization == "none"
    tried = {t["engine"]: t for t in made["tried"]}
    assert set(tried) == {"openvino", "onnxruntime"}
    assert all(t["works"] and t["agreement"] == 1.0 for t in tried.values())
    assert tried[slowed]["ms"] > tried[winner]["ms"]
    assert "slower" in tried[slowed]["rejected"] and made["why"].startswith(f"{winner} fp32")
    assert made["cpu"] and made["threads"] == 2


@pytest.mark.system
def test_a_server_answers_at_once_and_swaps_in_the_engine_measured_faster(start_server):
    """A model not yet measured on this machine is served at once (OpenVINO fp32, the
    network the build left) while a child process times the candidates, once for both
    workers; then each worker swaps in the winner -- here ONNX Runtime, OpenVINO being
    made slower for real (AUTO_HANDICAP_MS) -- without a failed request, and /readyz says
    which engine and precision were chosen, from which timings, and why."""
    import requests

    from testkit.photos import encode

    server = start_server("gunicorn", ENGINE="auto", QUANTIZE="none", WEB_CONCURRENCY=2,
                          TORCH_THREADS=1, AUTO_HANDICAP_MS="openvino:fp32=40")
    server.wait_ready(timeout=600)
    image = encode(real_photos()[0].image)
    statuses, engines_seen = [], set()
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        reply = requests.post(server.url + "/predict", files={"image": ("p.jpg", image)},
                              timeout=60)
        statuses.append(reply.status_code)
        if reply.status_code == 200:
            engines_seen.add(reply.json()["model"]["engine"])
        # The worker that ran the trials logs them once their child has exited, which
        # may be after both workers swapped.
        if server.log.count("chosen by measuring") == 2 and "trials took" in server.log:
            break
    assert server.log.count("chosen by measuring") == 2, server.log[-3000:]
    assert set(statuses) == {200}
    served = re.findall(r"model ready: .* engine (\w+), (\w+)\)", server.log)
    assert served[:2] == [("openvino", "fp32")] * 2 and served[2:] == [
        ("onnxruntime", "fp32")] * 2, served
    assert server.log.count("trials took") == 1  # measured once, for both workers
    for _ in range(4):  # whichever worker answers
        ready = requests.get(server.url + "/readyz", timeout=30).json()["engine"]
        assert ready["engine"] == "onnxruntime" and ready["auto"]["engine"] == "onnxruntime"
        assert ready["precision"] == ready["auto"]["chosen"] == "fp32"
        tried = {t["engine"]: t for t in ready["auto"]["tried"]}
        assert set(tried) == {"openvino", "onnxruntime"}
        assert tried["openvino"]["ms"] > tried["onnxruntime"]["ms"] > 0  # chosen from these
        assert "slower" in tried["openvino"]["rejected"]
        assert "onnxruntime fp32" in ready["auto"]["why"]
    reply = requests.post(server.url + "/predict", files={"image": ("p.jpg", image)},
                          timeout=60)
    assert reply.json()["model"]["engine"] == "onnxruntime"
    assert len(ops.worker_pids(server)) == 2


def test_handicaps_are_read_as_engine_precision_ms_pairs():
    from webapp.engines.precision import parse_handicap

    assert parse_handicap("") == {}
    assert parse_handicap("openvino:int8=5, onnxruntime:fp32=2.5") == {
        ("openvino", "int8"): 5.0, ("onnxruntime", "fp32"): 2.5}
    with pytest.raises(ValueError, match="engine:precision=ms"):
        parse_handicap("openvino:int8")


def test_under_an_isa_cap_only_openvino_is_tried(monkeypatch):
    """ONEDNN_MAX_CPU_ISA caps OpenVINO only: ONNX Runtime would be timed with the
    instructions the cap takes away, so ENGINE=auto leaves it out and says why."""
    from webapp.engines.precision import candidates, engines_tried

    card = engines.ModelCard(key="-", name="", arch="", labels=[], version="", source="",
                             source_kind="")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert candidates(card, settings("auto", "auto")) == [
        ("openvino", "fp32"), ("onnxruntime", "fp32"), ("openvino", "bf16"),
        ("openvino", "int8"), ("onnxruntime", "int8")]
    assert candidates(card, settings("onnxruntime", "auto")) == [
        ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert candidates(card, settings("auto", "auto")) == [
        ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    assert "ONNX Runtime ignores it" in engines_tried(settings("auto", "auto"))[1]
    onnx = engines.ModelCard(key="-", name="", arch="", labels=[], version="", source="",
                             source_kind="", kind="onnx")
    assert ("openvino", "int8") not in candidates(onnx, settings("auto", "auto"))


def test_a_cache_starts_from_a_seed_made_ahead_of_time(tmp_path):
    """ENGINE_CACHE_SEED (the Docker image's /opt/engines): intact entries the cache lacks
    are copied with their sidecars, OpenVINO's compiled networks too; a damaged entry, a
    lock and what the cache has already are left alone; a second start copies nothing."""
    from webapp.engines.artefacts import ArtefactCache

    seed = ArtefactCache(tmp_path / "seed")
    seed.put("abc.card.json", lambda tmp: tmp.write_text("{}", "utf-8"))
    seed.put("abc.fp32.onnx", lambda tmp: tmp.write_bytes(b"network"))
    seed.put("abc.head.npz", lambda tmp: tmp.write_bytes(b"head"))
    (seed.root / "abc.head.npz").write_bytes(b"damaged")  # no longer its sidecar's bytes
    (seed.root / "openvino").mkdir()
    (seed.root / "openvino" / "123.blob").write_bytes(b"compiled")
    (seed.root / ".abc.card.json.lock").write_text("", "utf-8")
    cache = ArtefactCache(tmp_path / "cache")
    cache.put("abc.fp32.onnx", lambda tmp: tmp.write_bytes(b"network"))

    assert cache.seed_from(seed.root) == 2
    assert cache.valid("abc.card.json") and cache.valid("abc.fp32.onnx")
    assert not (cache.root / "abc.head.npz").exists()
    assert (cache.root / "openvino" / "123.blob").read_bytes() == b"compiled"
    assert not (cache.root / ".abc.card.json.lock").exists()
    assert cache.seed_from(seed.root) == 0
    assert cache.seed_from(tmp_path / "no-such-folder") == 0
    assert cache.seed_from(cache.root) == 0
