"""Getting a runnable model: explicit file, torchvision cache, bundled fallback,
checkpoint validation, quantization and thread tuning -- with real weight files."""

from __future__ import annotations

import functools
import http.server
import json
import pickle
import re
import socket
import subprocess
import sys
import threading

import pytest
import torch
import torchvision
from torch import nn

import model_loader
from model_loader import ModelLoadError
from testkit import ROOT
from testkit.model_files import ACCEPTED, TORCH_WORDS
from testkit.server import free_port
from testkit.weights import save_random_resnet18


def test_explicit_weights_file_is_served(random_resnet18):
    loaded = model_loader.load_imagenet_model(random_resnet18)
    assert loaded.arch == "resnet18"
    assert loaded.source_kind == "explicit"
    assert loaded.source == str(random_resnet18)
    assert len(loaded.labels) == 1000 and loaded.labels[285] == "Egyptian cat"
    assert loaded.version == model_loader.sha256_file(random_resnet18)[:12]
    # The weights really are the file's: same output as a model built from it directly.
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(random_resnet18, weights_only=True))
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), reference.eval()(x), atol=1e-5)


def test_cache_path_is_where_torchvision_puts_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert model_loader.cache_path() == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_torchvision_cache_is_used_and_its_hash_checked(tmp_path, monkeypatch):
    """Decision: like torchvision, a cached file is trusted once it loads and fits; its
    sha256 is compared with the published prefix and a mismatch is reported, not hidden."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = save_random_resnet18(model_loader.cache_path())
    loaded = model_loader.load_imagenet_model()
    assert loaded.source_kind == "cache"
    assert loaded.source == str(cached)
    assert loaded.arch == "resnet18"
    assert loaded.verified is False
    assert "f37072fd" in loaded.notice and "download" in loaded.notice


def test_corrupt_cache_falls_back_to_bundled_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = model_loader.cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x80\x02 not really a checkpoint")
    loaded = model_loader.load_imagenet_model()
    assert loaded.source_kind == "bundled"
    assert "cached ResNet18 file is unusable" in loaded.notice


def test_no_weights_anywhere_serves_the_bundled_imagenet_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = model_loader.load_imagenet_model()
    assert loaded.source_kind == "bundled"
    assert loaded.arch == "efficientnet_lite0"
    assert len(loaded.labels) == 1000
    assert "python -m model_loader download" in loaded.notice


def test_another_imagenet_architecture_is_detected_and_a_wrong_one_named_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    loaded = model_loader.load_imagenet_model(path)  # MODEL_WEIGHTS=resnet34.pth
    assert loaded.arch == "resnet34" and loaded.labels[285] == "Egyptian cat"
    assert loaded.details["arch_from"] == "detected"
    with pytest.raises(ModelLoadError, match="does not fit the architecture resnet18: "
                       "96 unexpected tensors.*on auto"):
        model_loader.load_checkpoint(path, arch="resnet18")


def test_fine_tuned_bare_state_dict_needs_class_names(tmp_path):
    path = save_random_resnet18(tmp_path / "five.pth", num_classes=5)
    with pytest.raises(ModelLoadError, match="does not name its classes and its head has 5 "
                       "outputs; give the 5 class names"):
        model_loader.load_imagenet_model(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is not a weights file", r"weights file \(neither .* a zip or a pickle\); "
                                        r"it looks like plain text"),
        (b"PK\x03\x04" + b"\x00" * 100, "not a readable PyTorch weights file"),
    ],
)
def test_corrupt_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        model_loader.load_imagenet_model(path)


def test_truncated_weights_file_is_a_clear_error(tmp_path, random_resnet18):
    path = tmp_path / "truncated.pth"
    path.write_bytes(random_resnet18.read_bytes()[: 5_000_000])
    with pytest.raises(ModelLoadError, match="not a readable PyTorch weights file"):
        model_loader.load_imagenet_model(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        model_loader.load_imagenet_model(tmp_path / "nope.pth")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _Shell:
    """A pickle that calls os.system: a module torch blocks outright ("unsupported
    GLOBAL ... is blocked", worded differently from other refused globals)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
@pytest.mark.parametrize("payload", [_Payload, _Shell])
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, writer, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    content = {"format": "webapp-checkpoint/1", "state_dict": payload(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(content))
    else:
        torch.save(content, path)
    with pytest.raises(ModelLoadError, match="could run code") as info:
        model_loader.load_checkpoint(path)
    assert not marker.exists()
    assert not [w for w in TORCH_WORDS if w.lower() in str(info.value).lower()]


def test_nan_weights_fail_the_probe(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="NaN"):
        model_loader.load_checkpoint(path)


def test_checkpoint_v1_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    path = model_loader.save_checkpoint(
        tmp_path / "shapes.pt", model, arch="resnet18", classes=["circle", "square", "star"],
        input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), metrics={"val_acc": 0.97},
    )
    loaded = model_loader.load_checkpoint(path)
    assert loaded.labels == ["circle", "square", "star"]
    assert (loaded.input_size, loaded.resize_size) == (64, 73)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    assert loaded.metrics == {"val_acc": 0.97} and loaded.created
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_checkpoint_with_head_and_class_count_mismatch_is_refused(tmp_path):
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    path = model_loader.save_checkpoint(tmp_path / "x.pt", model, arch="resnet18",
                                        classes=["a", "b", "c"])
    payload = torch.load(path, weights_only=True)
    payload["classes"] = ["a", "b"]
    torch.save(payload, path)
    with pytest.raises(ModelLoadError, match="head has 3 outputs but the checkpoint names 2"):
        model_loader.load_checkpoint(path)


@pytest.mark.slow
def test_dynamic_quantization_quantizes_the_linear_head(random_resnet18, tmp_path):
    """ENGINE=torch QUANTIZE=dynamic (the design card's recipe): int8 Linear layers, the
    same answers as fp32."""
    from webapp import engines
    from webapp.engines import EngineSettings, torch_engine

    settings = EngineSettings(engine="torch", quantize="dynamic", cache_dir=str(tmp_path))
    source = engines.builtin_source({"MODEL_WEIGHTS": str(random_resnet18)})
    card, engine = engines.serve(source, settings)
    assert card.quantization == "dynamic" and torch.get_num_threads() == 1
    assert not isinstance(engine.module.fc, nn.Linear)  # replaced by an int8 Linear
    loaded = model_loader.load_imagenet_model(random_resnet18)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        fp32 = loaded.module(x)
    int8, _ = engine(x.numpy())
    assert torch.equal(fp32.argmax(1), torch.from_numpy(int8).argmax(1))
    with pytest.raises(ModelLoadError, match="QUANTIZE='fast' is not supported"):
        engines.serve(source, EngineSettings(engine="torch", quantize="fast"))
    before = torch.get_num_threads()
    try:
        assert torch_engine.configure_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_the_architecture_list_is_torchvisions():
    """Workers check an uploaded arch name against a written-out list (no torchvision in a
    worker); a torchvision upgrade that adds or drops a model shows here."""
    listed = set(torchvision.models.list_models(module=torchvision.models))
    assert model_loader.supported_archs() == listed | {"efficientnet_lite0"}


@pytest.mark.system
def test_info_command_names_the_model_and_the_way_to_resnet18():
    result = subprocess.run([sys.executable, "-m", "model_loader", "info"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "EfficientNet-Lite0" in result.stdout
    assert "python -m model_loader download" in result.stdout


@pytest.mark.system
def test_info_command_fails_clearly_on_a_bad_model_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    import os

    result = subprocess.run([sys.executable, "-m", "model_loader", "info"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MODEL_WEIGHTS": str(bad)})
    assert result.returncode == 1
    assert "not a readable PyTorch weights file" in result.stderr


# --------------------------------------------------------------------------- download
# No test reaches the internet: the download command is pointed (--url, its mirror
# option) at servers on 127.0.0.1 that are closed, silent, or serve the wrong file.


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def cached_files(torch_home) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_offline_is_one_quiet_line_with_optional_and_an_error_without(
        torch_home, capsys):
    url = f"http://127.0.0.1:{free_port()}/resnet18-f37072fd.pth"  # nothing listens
    assert model_loader.main(["download", "--url", url, "--optional"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "were not fetched" in err and "bundled EfficientNet-Lite0" in err
    assert model_loader.main(["download", "--url", url]) == 1
    assert "error: could not download" in capsys.readouterr().err
    assert cached_files(torch_home) == []
    # ... and the server still starts, with the bundled model.
    assert model_loader.load_imagenet_model().source_kind == "bundled"


def test_download_gives_up_on_a_server_that_never_answers(torch_home, capsys):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel does), never says a word
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/resnet18-f37072fd.pth"
        assert model_loader.main(["download", "--url", url, "--timeout", "1"]) == 1
    assert "timed out" in capsys.readouterr().err
    assert cached_files(torch_home) == []


def test_download_shows_progress_and_refuses_a_file_that_is_not_the_published_one(
        torch_home, tmp_path, capsys, random_resnet18):
    """A mirror serving another file (a random ResNet18): the bytes arrive with a progress
    bar, the sha256 check refuses them, and nothing is left in the cache."""
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "resnet18-f37072fd.pth").write_bytes(random_resnet18.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as mirror:
        threading.Thread(target=mirror.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{mirror.server_port}/resnet18-f37072fd.pth"
        try:
            assert model_loader.main(["download", "--url", url]) == 1
        finally:
            mirror.shutdown()
    err = capsys.readouterr().err
    assert "100%" in err  # the progress bar got to the end of the transfer
    assert "invalid hash value" in err and "f37072fd" in err
    assert cached_files(torch_home) == []


# --------------------------------------------------------------------------- model files
# Every row of the table of model files: the files people have (testkit/model_files.py).

def fields_of(entry) -> dict:
    """The keyword arguments of load_checkpoint for what a person sends with the file."""
    fields = dict(entry.fields)
    if entry.labels:
        fields["labels"] = entry.labels[1]
    return fields


@pytest.mark.parametrize("row", ACCEPTED)
def test_every_accepted_file_loads_as_the_network_it_holds(model_files, row):
    entry = getattr(model_files, row)
    loaded = model_loader.load_checkpoint(entry.path, **fields_of(entry))
    assert loaded.arch == entry.arch and loaded.labels == entry.classes
    assert (loaded.input_size, loaded.mean, loaded.std) == (entry.input_size, entry.mean,
                                                          entry.std)
    if entry.arch == "onnx":
        assert loaded.module is None and loaded.kind == "onnx"
        assert loaded.outputs == "logits" and loaded.details["batch"] == "any"
        return
    # The weights really are the file's: the same scores as the network that was saved.
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), entry.module(x), atol=1e-5)
    assert loaded.kind == ("safetensors" if entry.path.suffix == ".safetensors" else "pytorch")
    expected_from = {"bare": "the classes field", "dataparallel": "the labels file",
                     "tutorial": "the file's 'class_to_idx'",
                     "v1_without_format": "the file's 'classes'",
                     "mlp_head": "the labels file (read as GBK (GB18030))",
                     "hugging_face": "the labels file"}
    if row in expected_from:
        assert loaded.details["classes_from"] == expected_from[row]
    assert entry.arch in loaded.summary()


@pytest.mark.parametrize("row, words", [
    ("dynamic_quantized", "the int8 weights of fc dequantized to fp32 (dynamic quantization)"),
    ("dropout_head", "head fc (Dropout, Linear 512→5) built from its keys"),
    ("mlp_head", "head fc (Linear 512→256, ReLU, Dropout, Linear 256→5) built from its keys "
     "(ReLU where no weights say which activation: send activation=gelu if it was GELU)"),
    ("prefixed", "key prefix 'backbone.' removed"),
    ("hugging_face", "Hugging Face ResNet key names mapped to torchvision's"),
    ("timm", "the EMA weights under 'state_dict_ema' (send ema=no for the trained weights)"),
    ("onnx_external", "weights read from model.onnx.data"),
    ("onnx_pixels", "it takes uint8 pixels, channels last"),
])
def test_the_summary_says_what_was_done_to_read_the_file(model_files, row, words):
    entry = getattr(model_files, row)
    assert words in model_loader.load_checkpoint(entry.path, **fields_of(entry)).summary()


def test_the_upload_may_choose_the_trained_weights_over_the_ema_ones(model_files):
    entry = model_files.timm
    loaded = model_loader.load_checkpoint(entry.path, ema="no", **fields_of(entry))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), model_files.resnet18(x), atol=1e-5)
    assert "EMA" not in loaded.summary() and "weights under 'state_dict'" in loaded.summary()


def test_a_gelu_head_is_built_when_the_upload_says_so(tmp_path, model_files):
    module = torchvision.models.resnet18(num_classes=5)
    module.fc = nn.Sequential(nn.Linear(512, 64), nn.GELU(), nn.Linear(64, 5))
    path = tmp_path / "gelu.pth"
    torch.save(module.state_dict(), path)
    loaded = model_loader.load_checkpoint(path, classes="a,b,c,d,e", activation="gelu")
    assert isinstance(loaded.module.fc[1], nn.GELU)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), module.eval()(x), atol=1e-5)


@pytest.mark.slow
def test_a_hugging_face_vit_is_read_as_torchvisions_vit_b_16(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from testkit.model_files import HuggingFaceLogits

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    loaded = model_loader.load_checkpoint(tmp_path / "model.safetensors",
                                          labels=(tmp_path / "config.json").read_bytes())
    assert loaded.arch == "vit_b_16" and loaded.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():  # layer norm's epsilon: 1e-12 there, 1e-6 here
        assert torch.allclose(loaded.module(x), HuggingFaceLogits(model)(x), atol=2e-3)


def test_the_summary_says_where_everything_was_found(model_files):
    loaded = model_loader.load_checkpoint(model_files.lightning.path,
                                          **fields_of(model_files.lightning))
    assert loaded.summary() == (
        "resnet18 (detected from the weights), 5 classes from the labels file, weights "
        "under 'state_dict', key prefix 'model.' removed")
    meta = loaded.metadata()
    assert json.loads(json.dumps(meta)) == meta  # what a child process can hand over
    assert meta["classes"] == model_files.lightning.classes and meta["kind"] == "pytorch"


def test_class_names_from_the_person_and_from_the_file_must_agree(model_files):
    tutorial, bare = model_files.tutorial, model_files.bare
    with pytest.raises(ModelLoadError, match="the classes field says classes cat, dog, fox, "
                       "owl, zebra but the file says cat, dog, fox, owl, yak"):
        model_loader.load_checkpoint(tutorial.path, classes="cat,dog,fox,owl,zebra")
    # The same names again are fine.
    assert model_loader.load_checkpoint(tutorial.path, classes=",".join(tutorial.classes),
                                        run_probe=False).labels == tutorial.classes
    with pytest.raises(ModelLoadError, match="the classes field .* and the labels file .* "
                       "name different classes"):
        model_loader.load_checkpoint(bare.path, classes="a,b,c,d,e", labels=b"a\nb\nc\nd\nx")
    with pytest.raises(ModelLoadError, match="head has 5 outputs but the classes field "
                       "names 4 classes"):
        model_loader.load_checkpoint(bare.path, classes="a,b,c,d")
    with pytest.raises(ModelLoadError, match="its head has 5 outputs; give the 5 class "
                       "names in output order"):
        model_loader.load_checkpoint(bare.path)


@pytest.mark.parametrize("text, names", [
    ("cat\ndog\r\n\nfox\n", ["cat", "dog", "fox"]),
    ('["cat", "dog", "fox"]', ["cat", "dog", "fox"]),
    ('{"fox": 2, "cat": 0, "dog": 1}', ["cat", "dog", "fox"]),  # class_to_idx
    ('{"1": "dog", "0": "cat", "2": "fox"}', ["cat", "dog", "fox"]),  # idx_to_class
    ("\ufeffTinca tinca, tench\ngoldfish\n", ["Tinca tinca, tench", "goldfish"]),
])
def test_labels_files_in_every_common_layout(text, names):
    assert model_loader.parse_labels_file(text.encode("utf-8"), "x") == names


@pytest.mark.parametrize("text, words", [
    (b"cat\ncat\n", "duplicate names (cat)"),
    (b"only-one\n", "at least two classes"),
    (b'{"cat": 0, "dog": 2}', "not 0 to 1"),
    (b"[1, 2]", "must be a list of class names"),
    (b'["cat", "dog"', "not valid JSON"),
    (bytes(range(128, 256)), "save it as UTF-8"),
])
def test_bad_labels_files_are_refused_with_the_reason(text, words):
    with pytest.raises(ModelLoadError, match=re.escape(words)):
        model_loader.parse_labels_file(text, "x")


def test_the_classes_field_takes_commas_or_lines():
    assert model_loader.parse_classes_field(" cat, dog ,fox ", "x") == ["cat", "dog", "fox"]
    assert model_loader.parse_classes_field("Tinca tinca, tench\ngoldfish", "x") == [
        "Tinca tinca, tench", "goldfish"]


def test_refusals_say_what_to_do_next(model_files, tmp_path):
    cases = [
        (model_files.whole_model, {}, "whole pickled model.*torch.save\\(model.state_dict"),
        (model_files.torchscript, {}, "TorchScript.*model.state_dict\\(\\).*or export"),
        (model_files.bare.path, {"arch": "resnet9000", "classes": "a,b,c,d,e"},
         "architecture 'resnet9000' is not supported; use one of: alexnet, .*resnet18"),
        (model_files.onnx.path, {}, "give the 5 class names of this ONNX model"),
        (model_files.onnx.path, {"classes": "a,b,c,d,e", "arch": "resnet18"},
         "ONNX model, not resnet18 weights; leave the architecture on auto"),
    ]
    for path, fields, words in cases:
        with pytest.raises(ModelLoadError, match=words) as info:
            model_loader.load_checkpoint(path, **fields)
        assert not [w for w in TORCH_WORDS if w.lower() in str(info.value).lower()], info.value


@pytest.mark.parametrize("index", range(7))
def test_every_refused_file_is_named_with_the_next_step(model_files, index):
    """testkit/model_files.py's refusal table: the message names the kind of file and what
    to do, and quotes none of torch's internals."""
    kind, path, fields, words = model_files.refused()[index]
    with pytest.raises(ModelLoadError) as info:
        model_loader.load_checkpoint(path, **fields)
    message = str(info.value)
    assert all(w in message for w in words), (kind, message)
    assert not [w for w in TORCH_WORDS + TORCH_INTERNALS if w.lower() in message.lower()], \
        message
    assert "closest" not in message.lower() or kind == "another network", message


# What torch's readers say about files they cannot read: never passed on to a person.
TORCH_INTERNALS = ("PytorchStreamReader", "data.pkl", "central directory", "invalid load key",
                   "_pickle", "UnpicklingError")


def test_the_head_is_found_from_the_architecture_not_from_key_order(tmp_path):
    """A valid ConvNeXt checkpoint whose keys were sorted: its last 2-D tensor is no
    longer the head (it used to be refused with "head has 768 outputs")."""
    model = torchvision.models.convnext_tiny(num_classes=3)
    path = model_loader.save_checkpoint(tmp_path / "convnext.pt", model, arch="convnext_tiny",
                                        classes=["a", "b", "c"])
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = dict(sorted(payload["state_dict"].items()))
    torch.save(payload, path)
    loaded = model_loader.load_checkpoint(path)
    assert loaded.arch == "convnext_tiny" and loaded.num_classes == 3
    heads = {arch: sorted(model_loader.signature(arch).head) for arch in (
        "resnet18", "convnext_tiny", "mobilenet_v3_large", "efficientnet_lite0",
        "squeezenet1_0", "vit_b_16")}
    assert heads == {
        "resnet18": ["fc.bias", "fc.weight"],
        "convnext_tiny": ["classifier.2.bias", "classifier.2.weight"],
        "mobilenet_v3_large": ["classifier.3.bias", "classifier.3.weight"],
        "efficientnet_lite0": ["_fc.bias", "_fc.weight"],
        "squeezenet1_0": ["classifier.1.bias", "classifier.1.weight"],  # a 1x1 convolution
        "vit_b_16": ["heads.head.bias", "heads.head.weight"],
    }


@pytest.mark.slow
def test_weights_that_fit_no_architecture_name_the_closest_and_what_differs(model_files,
                                                                           tmp_path):
    path = tmp_path / "extra.pth"
    torch.save({**model_files.state_dict, "criterion.pos_weight": torch.ones(5)}, path)
    with pytest.raises(ModelLoadError, match="fit none of the 81 supported architectures. "
                       "The closest is resnet18: 1 unexpected tensors \\(e.g. "
                       "criterion.pos_weight\\)"):
        model_loader.load_checkpoint(path, classes=",".join(model_files.bare.classes))


def test_batchnorm_counters_may_be_missing(model_files, tmp_path):
    path = tmp_path / "no-counters.pth"
    torch.save({k: v for k, v in model_files.state_dict.items()
                if not k.endswith("num_batches_tracked")}, path)
    loaded = model_loader.load_checkpoint(path, classes="a,b,c,d,e")
    assert loaded.arch == "resnet18"


@pytest.mark.system
def test_convert_writes_a_v1_checkpoint_from_any_accepted_file(model_files, tmp_path, capsys):
    out = tmp_path / "fruit.pt"
    code = model_loader.main(["convert", str(model_files.lightning.path), "--labels",
                              str(_write(tmp_path / "labels.txt", model_files.lightning)),
                              "--out", str(out)])
    assert code == 0 and "checkpoint v1 of resnet18" in capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == model_loader.CHECKPOINT_FORMAT
    assert payload["classes"] == model_files.lightning.classes
    assert model_loader.load_checkpoint(out).details["classes_from"] == "the checkpoint"
    # The real command line, and its refusal.
    out2 = tmp_path / "bare-v1.pt"
    result = subprocess.run(
        [sys.executable, "-m", "model_loader", "convert", str(model_files.bare.path),
         "--arch", "resnet18", "--classes", "a,b,c,d,e", "--out", str(out2)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert model_loader.load_checkpoint(out2).labels == ["a", "b", "c", "d", "e"]
    assert model_loader.main(["convert", str(model_files.bare.path), "--out",
                              str(tmp_path / "x.pt")]) == 1
    assert "give the 5 class names" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def _write(path, entry):
    path.write_bytes(entry.labels[1])
    return path


def test_an_onnx_model_with_a_fixed_batch_and_a_softmax_is_served_with_its_scores(
    model_files, tmp_path
):
    """Batch fixed at 1 (several images run one by one) and probabilities as output (the
    engine returns their log, so the server's softmax gives the same scores), in both
    engines; int8 is not made for uploaded ONNX models and says so."""
    import warnings

    module = nn.Sequential(model_files.resnet18, nn.Softmax(dim=1)).eval()
    path = tmp_path / "softmax.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
    loaded = model_loader.load_checkpoint(path, classes="a,b,c,d,e")
    assert (loaded.input_size, loaded.outputs, loaded.details["batch"]) == (
        64, "probabilities", 1)
    assert "it outputs probabilities" in loaded.summary()
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = module(x)
    from webapp import engines
    from webapp.engines import EngineSettings

    source = engines.checkpoint_source(path, given={"classes": "a,b,c,d,e"})
    for engine in ("openvino", "onnxruntime", "torch"):
        card, served = engines.serve(source, EngineSettings(
            engine=engine, cache_dir=str(tmp_path / "cache")))
        assert served.name == ("onnxruntime" if engine == "torch" else engine)
        logits = torch.from_numpy(served(x.numpy())[0])
        assert torch.allclose(logits.softmax(dim=1), expected, atol=1e-4)
    card, served = engines.serve(source, EngineSettings(
        engine="onnxruntime", quantize="static", cache_dir=str(tmp_path / "cache")))
    assert served.precision == "fp32" and "fp32" in served.info["fallback"]
    with pytest.raises(ModelLoadError, match="the input_size field says input_size 224 "
                       "but the file says 64"):
        model_loader.load_checkpoint(path, classes="a,b,c,d,e", input_size=224)
