"""The seed recipe, as the mission card describes it, for the benchmark to beat:
Flask, full PIL decode, torchvision Resize(256) / CenterCrop(224) / Normalize, ResNet18
with ``quantize_dynamic`` on ``nn.Linear``, ``no_grad``, softmax top-3.

    python -m bench.baseline_server WEIGHTS.pth --port 5001

(``/readyz`` answers once the model is loaded, like the project's server, so the
benchmark can time the start the same way.)"""

import argparse

import torch
import torchvision
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import transforms

parser = argparse.ArgumentParser()
parser.add_argument("weights")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=5001)
args = parser.parse_args()

model = torchvision.models.resnet18()
model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
model.eval()
model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
labels = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
transform = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])

app = Flask(__name__)


@app.post("/predict")
def predict():
    image = Image.open(request.files["image"].stream).convert("RGB")
    batch = transform(image).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(batch)[0], dim=0)
    scores, indices = probs.topk(3)
    return jsonify(predictions=[
        {"label": labels[i], "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())
    ])


@app.get("/readyz")
def readyz():
    return jsonify(status="ready")


if __name__ == "__main__":
    app.run(host=args.host, port=args.port, threaded=True)
