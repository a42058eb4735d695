"""Model files and what is in them: ``load`` (``load_checkpoint``, ``load_imagenet_model``)
and the steps of reading a file a person uploads or the server finds, one module each, in
the order a file meets them (``model_loader``, at the top level, is their command line).

- ``files``: what kind of file it is (from its bytes) and reading it safely: pickles that
  could run code, TorchScript, damaged files and tensor "bombs" are refused in words;
- ``layouts``: where the weights sit in other people's training checkpoints (wrappers,
  key prefixes); ``v1``: this project's own format, written and read strictly;
- ``labels``: class names from the file, a form field or a labels file;
- ``fields``: what the person said (``Given``) and how it must agree with the file;
- ``architectures``: the supported networks, their state_dict signatures, ``auto``
  detection, fitting and the probe inference;
- ``torch_model`` / ``onnx_model``: the validated model from all of that;
- ``imagenet``: the built-in ImageNet model's weight sources and download;
- ``preprocess``: the model's input transform, shared by serving and training;
- ``loaded``: the shared nouns (``ModelLoadError``, ``Contents``, ``LoadedModel``).

No module imports torch at import time: web workers import this package and must never
map libtorch (torch is imported inside the functions that need it).
"""
