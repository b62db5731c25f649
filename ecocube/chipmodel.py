"""Chip model bundles (``model.kind: chip``): an ONNX file run by onnxruntime, with its
normalisation, classes and input channels stored beside it.

A bundle is a folder with ``model.onnx`` and ``model.json``::

    {"format": "ecocube-model", "format_version": 1, "kind": "chip",
     "model_file": "model.onnx", "model_sha256": "...",
     "feature_names": [...],              # the input channels, in order (= the run's feature columns)
     "classes": [1, 2, ...], "class_names": [...],
     "normalisation": {"mean": [...], "std": [...]},   # per channel: x' = (x - mean) / std
     "scores": "probabilities" | "logits", # logits get a softmax over the class axis
     "receptive_radius": 1,               # optional: pixels of context each output needs
     "versions": {...}}

The ONNX graph takes one float32 input ``(n, channels, H, W)`` and returns one output
``(n, classes, H, W)``. :func:`save_chip_bundle` writes a bundle (atomically, checksummed);
:func:`load_chip_bundle` checks the checksum, the channels against the run's feature
columns, and the graph's input/output shapes, and returns a :class:`ChipBundle` whose
``run(chips)`` is the callable :func:`ecocube.chips.predict_chips` takes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import sha256_file, write_bytes_atomic, write_text_atomic
from .bundle import BUNDLE_FORMAT, BUNDLE_VERSION, META_FILE, check_features, read_bundle_metadata
from .errors import ModelError

__all__ = ["ChipBundle", "linear_chip_onnx", "load_chip_bundle", "save_chip_bundle"]

ONNX_FILE = "model.onnx"


def save_chip_bundle(folder: str | Path, onnx_bytes: bytes, *, feature_names: Sequence[str],
                     classes: Sequence[int], class_names: Sequence[str] | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     scores: str = "probabilities", receptive_radius: int | None = None) -> Path:
    """Write a chip bundle (``model.onnx`` + ``model.json``) into ``folder``; returns it."""
    from . import __version__

    n = len(feature_names)
    mean = [0.0] * n if mean is None else [float(v) for v in mean]
    std = [1.0] * n if std is None else [float(v) for v in std]
    if len(mean) != n or len(std) != n:
        raise ModelError(f"chip bundle: {n} channels but {len(mean)} means and {len(std)} stds")
    if any(not np.isfinite(s) or s <= 0 for s in std):
        raise ModelError(f"chip bundle: every normalisation std must be positive, got {std}")
    if scores not in ("probabilities", "logits"):
        raise ModelError(f"chip bundle: scores must be 'probabilities' or 'logits', got {scores!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / ONNX_FILE, onnx_bytes)
    meta = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "kind": "chip",
        "model_file": ONNX_FILE, "model_sha256": sha256_file(folder / ONNX_FILE),
        "feature_names": list(feature_names), "classes": [int(c) for c in classes],
        "class_names": [str(c) for c in (class_names or classes)],
        "normalisation": {"mean": mean, "std": std}, "scores": scores,
        "receptive_radius": receptive_radius, "ecocube_version": __version__,
        "versions": {"onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")},
    }
    write_text_atomic(folder / META_FILE, json.dumps(meta, indent=2) + "\n")
    return folder


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


class ChipBundle:
    """A loaded chip model: ``run(chips)`` normalises and returns class probabilities."""

    kind = "chip"

    def __init__(self, folder: Path, meta: dict, session, *, threads: int = 1):
        self.folder = folder
        self.meta = meta
        self.session = session
        self.classes = np.asarray(meta["classes"])
        self.class_names = list(meta.get("class_names") or [str(c) for c in self.classes])
        self.feature_names = list(meta["feature_names"])
        norm = meta.get("normalisation") or {}
        n = len(self.feature_names)
        self.mean = np.asarray(norm.get("mean") or [0.0] * n, np.float32).reshape(n, 1, 1)
        self.std = np.asarray(norm.get("std") or [1.0] * n, np.float32).reshape(n, 1, 1)
        self.scores = meta.get("scores", "probabilities")
        self.receptive_radius = meta.get("receptive_radius")
        self.input_name = session.get_inputs()[0].name

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """``(channels, H, W)`` raw features -> normalised float32, non-finite values -> 0 (the mean)."""
        x = (np.asarray(image, np.float32) - self.mean) / self.std
        x[~np.isfinite(x)] = 0.0
        return x

    def run(self, chips: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, classes, H, W)`` of normalised chips ``(n, channels, H, W)``."""
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(chips, np.float32)})[:1]
        out = np.asarray(out, np.float32)
        if out.ndim != 4 or out.shape[1] != self.classes.size:
            raise ModelError(f"chip model {self.folder}: output shape {out.shape}, expected "
                             f"(n, {self.classes.size}, H, W)")
        if self.scores == "logits":
            out = out - out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        return out


def load_chip_bundle(folder: str | Path, expected_features: list[str] | None = None, *,
                     threads: int = 1) -> ChipBundle:
    """Load and check a chip bundle (see the module docstring); ``threads``: onnxruntime's
    intra-op threads (from the allocation, never the node's core count)."""
    import onnxruntime as ort

    folder = Path(folder)
    meta = read_bundle_metadata(folder)
    if meta.get("kind") != "chip":
        raise ModelError(f"model bundle {folder} is not a chip model (kind {meta.get('kind', 'ensemble')!r}); "
                         "model.kind: chip needs one written by ecocube.chipmodel.save_chip_bundle")
    path = folder / meta.get("model_file", ONNX_FILE)
    if not path.exists():
        raise ModelError(f"model bundle {folder}: {path.name} is missing")
    if sha256_file(path) != meta.get("model_sha256"):
        raise ModelError(f"model bundle {folder}: {path.name} does not match the checksum in {META_FILE}")
    if expected_features is not None:
        check_features(list(meta.get("feature_names") or []), list(expected_features), folder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"model bundle {folder}: onnxruntime cannot load {path.name}: {exc}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelError(f"chip model {path}: needs one 4-D input (n, channels, H, W), has "
                         f"{[(i.name, i.shape) for i in inputs]}")
    channels = inputs[0].shape[1]
    if isinstance(channels, int) and channels != len(meta.get("feature_names") or []):
        raise ModelError(f"chip model {path}: input has {channels} channels, model.json lists "
                         f"{len(meta.get('feature_names') or [])} features")
    if not outputs or len(outputs[0].shape) != 4:
        raise ModelError(f"chip model {path}: needs a 4-D output (n, classes, H, W)")
    return ChipBundle(folder, meta, session, threads=threads)


def linear_chip_onnx(coef: np.ndarray, intercept: np.ndarray, *, smooth: int = 1) -> bytes:
    """An ONNX chip model from a per-pixel linear classifier (e.g. a fitted multinomial
    logistic regression on normalised features): a 1×1 convolution gives each pixel's class
    logits, a ``(2 * smooth + 1)``² mean filter per class averages them over the
    neighbourhood (receptive radius ``smooth``), then a softmax over the classes.
    Input ``x`` ``(n, channels, H, W)``, output ``y`` ``(n, classes, H, W)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    coef = np.asarray(coef, np.float32)
    k, c = coef.shape
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(coef.reshape(k, c, 1, 1), "w"),
             numpy_helper.from_array(np.asarray(intercept, np.float32).reshape(k), "b")]
    last = "logits"
    if smooth > 0:
        size = 2 * smooth + 1
        inits.append(numpy_helper.from_array(np.full((k, 1, size, size), 1.0 / size ** 2, np.float32), "mean"))
        nodes.append(helper.make_node("Conv", ["logits", "mean"], ["smoothed"], kernel_shape=[size, size],
                                      pads=[smooth] * 4, group=k))
        last = "smoothed"
    nodes.append(helper.make_node("Softmax", [last], ["y"], axis=1))
    graph = helper.make_graph(nodes, "ecocube-linear-chip",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", k, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ecocube")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
