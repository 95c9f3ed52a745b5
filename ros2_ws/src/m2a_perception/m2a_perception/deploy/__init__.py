"""Deployment: precision recipes, TensorRT engines, the engine cache and the accuracy gate.

- `precision`: FP32 / FP16 recipes written into the model; `InferenceGraph` (uint8 in,
  normalisation inside, FP32 logits out) and its strict export / ONNX export.
- `cache`: engine keys (weights, code, shape, precision, versions, GPU), JSON sidecars, the
  `load_only` / `build_if_missing` / `force_rebuild` policies, atomic writes.
- `gate`: the accuracy gate of an engine against eager FP32.
- `tensorrt_backend`: `TensorRTBackend` (torch-tensorrt) and `OnnxTensorRTBackend` (TensorRT
  ONNX parser), GPU only.
- `build`: `provision_engine` / `open_prebuilt_engine` (with an `on_state` progress callback for
  the node's diagnostics) and the `m2a-build-engine` command.

Nothing here imports TensorRT or torch-tensorrt at import time; they are imported inside the
functions that need them, so the package imports on CPU-only machines.

Allowed dependencies: torch, numpy, Pillow, onnx (lazily), the core (`model`, `export`,
`inference`, `preprocess`, `postprocess`, `metrics`, `weights`); tensorrt and torch_tensorrt
lazily in `tensorrt_backend`. Never rclpy or `m2a_training`.
"""
