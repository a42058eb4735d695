"""Getting a runnable model: explicit file, torchvision cache, bundled fallback,
checkpoint validation, quantization and thread tuning -- with real weight files."""

from __future__ import annotations

import functools
import http.server
import pickle
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
from tests.conftest import ROOT, free_port, save_random_resnet18


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


def test_wrong_shape_file_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit the architecture.*unexpected"):
        model_loader.load_imagenet_model(path)


def test_fine_tuned_bare_state_dict_needs_class_names(tmp_path):
    path = save_random_resnet18(tmp_path / "five.pth", num_classes=5)
    with pytest.raises(ModelLoadError, match="1000-class ImageNet model.*5 outputs"):
        model_loader.load_imagenet_model(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is not a weights file", "not a readable PyTorch weights file"),
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


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"format": "webapp-checkpoint/1", "state_dict": _Payload(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(ModelLoadError, match="could run code"):
        model_loader.load_checkpoint(path)
    assert not marker.exists()


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


def test_dynamic_quantization_quantizes_the_linear_head(random_resnet18):
    loaded = model_loader.load_imagenet_model(random_resnet18)
    quantized = model_loader.quantize(loaded, "dynamic")
    assert quantized.quantization == "dynamic"
    assert not isinstance(quantized.engine.fc, nn.Linear)  # replaced by an int8 Linear
    assert isinstance(quantized.module.fc, nn.Linear)  # the fp32 model is kept
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        fp32, int8 = loaded.module(x), quantized.engine(x)
    assert torch.equal(fp32.argmax(1), int8.argmax(1))
    with pytest.raises(ModelLoadError, match="QUANTIZE='fast' is not supported"):
        model_loader.quantize(loaded, "fast")


def test_configure_threads_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert model_loader.configure_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_info_command_names_the_model_and_the_way_to_resnet18():
    result = subprocess.run([sys.executable, "-m", "model_loader", "info"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "EfficientNet-Lite0" in result.stdout
    assert "python -m model_loader download" in result.stdout


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
