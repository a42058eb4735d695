"""The design card's model outside any server: ResNet18 from a weights file, dynamic int8
(``quantize_dynamic`` on the linear layer, as ``ENGINE=torch QUANTIZE=dynamic`` serves it),
``torch.set_num_threads(threads)``.  Prints ``ready``, then one forward pass of a 224 px
batch of one per line read from stdin, answering with its time in ms.

bench/run.py alternates these passes with requests to the server, so both are measured at
the same moments of the same machine's load (a figure taken minutes apart moved 30 % here)."""

from __future__ import annotations

import sys
import time
import warnings

import torch
import torchvision


def main() -> None:
    weights, threads = sys.argv[1], int(sys.argv[2])
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    batch = torch.randn(1, 3, 224, 224)
    print("ready", flush=True)
    with torch.inference_mode():
        for _ in sys.stdin:
            started = time.perf_counter()
            model(batch)
            print((time.perf_counter() - started) * 1000, flush=True)


if __name__ == "__main__":
    main()
