"""Chips: layout, stitching against whole-image prediction, the chip filter, ONNX bundles."""

from __future__ import annotations

import numpy as np
import pytest

from ecocube.chips import chip_filter, chip_grid, chip_starts, predict_chips
from ecocube.errors import ModelError


def conv_softmax_onnx(weight: np.ndarray, bias: np.ndarray, *, layers: int = 1) -> bytes:
    """``layers`` × (3×3 conv, zero padding 1) then softmax over classes, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, c = weight.shape[:2]
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = weight if i == 0 else np.tile(np.eye(k, dtype=np.float32)[:, :, None, None], (1, 1, 3, 3)) / 9
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((bias if i == 0 else np.zeros(k)).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"h{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", k, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _session_run(onnx_bytes: bytes):
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]


def _conv_numpy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Reference 3×3 conv (zero padding) + softmax in numpy, independent of onnxruntime."""
    c, h, w = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weight.shape[0], h, w), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("kc,chw->khw", weight[:, :, dy, dx], p[:, dy:dy + h, dx:dx + w])
    out += bias[:, None, None]
    out = np.exp(out - out.max(axis=0))
    return out / out.sum(axis=0)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    return weight, bias, conv_softmax_onnx(weight, bias)


def test_chip_starts_cover_and_end_at_edge():
    assert chip_starts(100, 32, 24) == [0, 24, 48, 68]
    assert chip_starts(32, 32, 24) == [0]
    assert chip_starts(10, 32, 24) == [0]
    with pytest.raises(ValueError):
        chip_starts(10, 0, 1)


@pytest.mark.parametrize("length,size,overlap", [(100, 32, 8), (64, 32, 0), (70, 16, 6), (20, 32, 4), (33, 32, 2)])
def test_owned_ranges_partition_the_image(length, size, overlap):
    g = chip_grid(length, length, size=size, overlap=overlap)
    covered = np.zeros(length, int)
    for (lo, hi), start in zip(g.own_rows, g.rows):
        covered[lo:hi] += 1
        # away from the image edge, an owned pixel is at least margin inside its chip
        if lo > 0:
            assert lo >= start + g.margin
        if hi < length:
            assert hi <= start + size - g.margin
    assert (covered == 1).all()


def test_onnx_model_matches_numpy_reference(model):
    weight, bias, onnx_bytes = model
    x = np.random.default_rng(1).normal(size=(1, 4, 9, 11)).astype(np.float32)
    got = _session_run(onnx_bytes)(x)[0]
    np.testing.assert_allclose(got, _conv_numpy(x[0], weight, bias), atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("shape", [(70, 90), (64, 64), (20, 25)])
def test_crop_stitching_equals_whole_image(model, layers, shape):
    """Centre cropping with margin >= receptive radius: equal to one whole-image prediction."""
    weight, bias, _ = model
    run = _session_run(conv_softmax_onnx(weight, bias, layers=layers))
    x = np.random.default_rng(2).normal(size=(4, *shape)).astype(np.float32)
    whole = run(x[None])[0]
    stitched = predict_chips(x, run, size=32, overlap=2 * layers, stitch="crop", batch=3)
    assert stitched.shape == whole.shape
    H, W = shape
    if H >= 32 and W >= 32:  # at least one seam exists: the check is not vacuous
        assert len(chip_grid(H, W, size=32, overlap=2 * layers).rows) > 1 or H == 32
    if H >= 32 and W >= 32:
        np.testing.assert_allclose(stitched, whole, atol=1e-6)
    else:  # padded up to one chip: only the outer margin band (a tile's halo) may differ
        m = layers
        np.testing.assert_allclose(stitched[:, m:-m, m:-m], whole[:, m:-m, m:-m], atol=1e-6)
    # too little overlap for the receptive field: seams show (the check can fail)
    if layers == 2 and H > 32:
        seamy = predict_chips(x, run, size=32, overlap=0, stitch="crop")
        assert np.abs(seamy - whole).max() > 1e-3


def test_blend_stitching_is_close_and_normalised(model):
    weight, bias, onnx_bytes = model
    run = _session_run(onnx_bytes)
    x = np.random.default_rng(3).normal(size=(4, 70, 70)).astype(np.float32)
    whole = run(x[None])[0]
    blended = predict_chips(x, run, size=32, overlap=16, stitch="blend")
    np.testing.assert_allclose(blended.sum(axis=0), 1.0, atol=1e-5)
    # only pixels next to chip edges differ; the centre of each chip is exact-ish
    assert np.abs(blended - whole).max() < 0.5
    assert np.abs(blended[:, 8:24, 8:24] - whole[:, 8:24, 8:24]).max() < 0.05


def test_chip_filter_by_target_and_valid_fraction():
    g = chip_grid(64, 64, size=32, overlap=0)  # 2 x 2 chips, each owns a 32 x 32 quarter
    target = np.zeros((64, 64), bool)
    target[:32, :] = True  # top half in the elevation range
    target[40, 40] = True  # one pixel of the bottom-right chip
    valid = np.ones((64, 64), bool)
    valid[:32, :32] = False
    valid[:4, :32] = True  # top-left: 4 of 32 rows valid = 12.5 %
    valid[:32, 32:][:6] = False  # top-right: 26 of 32 rows valid = 81.25 %
    targeted, predicted = chip_filter(g, target=target, valid=valid, min_valid=0.8)
    assert targeted.tolist() == [[True, True], [False, True]]
    assert predicted.tolist() == [[False, True], [False, True]]
    # pixels of chips not run have no score
    x = np.zeros((1, 64, 64), np.float32)
    out = predict_chips(x, lambda c: np.ones((c.shape[0], 2, 32, 32), np.float32) / 2, size=32, overlap=0,
                        which=predicted)
    assert np.isnan(out[:, :32, :32]).all() and np.isnan(out[:, 32:, :32]).all()
    assert (out[:, :32, 32:] == 0.5).all() and (out[:, 32:, 32:] == 0.5).all()


def test_chip_filter_only_counts_chips_owning_inner_pixels():
    g = chip_grid(40, 40, size=16, overlap=4)  # a 4-pixel halo around a 32 x 32 tile block
    inner = (slice(4, 36), slice(4, 36))
    targeted, predicted = chip_filter(g, target=None, valid=None, min_valid=0.0, inner=inner)
    assert targeted.sum() == predicted.sum() == g.n
    g2 = chip_grid(64, 64, size=16, overlap=4)  # a 16-pixel halo: starts 0, 12, 24, 36, 48
    assert g2.own_rows == ((0, 14), (14, 26), (26, 38), (38, 50), (50, 64))
    inner2 = (slice(16, 48), slice(16, 48))
    t2, _ = chip_filter(g2, target=None, valid=None, min_valid=0.0, inner=inner2)
    # the first and last chip of each axis own only halo pixels: not counted
    assert t2[1:4, 1:4].all() and t2.sum() == 9


def test_bad_model_output_shape_is_an_error():
    x = np.zeros((1, 40, 40), np.float32)
    with pytest.raises(ValueError, match="scores of shape"):
        predict_chips(x, lambda c: np.zeros((c.shape[0], 2, 8, 8)), size=32, overlap=4)


def test_chip_bundle_roundtrip_normalises_and_checks(tmp_path, model):
    from ecocube.chipmodel import load_chip_bundle, save_chip_bundle

    weight, bias, onnx_bytes = model
    names = ["a", "b", "c", "d"]
    mean, std = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 0.5, 1.0]
    save_chip_bundle(tmp_path / "m", onnx_bytes, feature_names=names, classes=[3, 5, 7], mean=mean, std=std)
    b = load_chip_bundle(tmp_path / "m", expected_features=names)
    raw = np.random.default_rng(4).normal(size=(4, 8, 8)).astype(np.float32)
    raw[1, 2, 2] = np.nan
    x = b.normalise(raw)
    expected = (raw - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    expected[1, 2, 2] = 0.0
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_allclose(b.run(x[None])[0], _conv_numpy(x, weight, bias), atol=1e-5)
    assert b.classes.tolist() == [3, 5, 7]
    with pytest.raises(ModelError, match="feature"):
        load_chip_bundle(tmp_path / "m", expected_features=["a", "b", "c", "e"])
    (tmp_path / "m" / "model.onnx").write_bytes(onnx_bytes + b"x")
    with pytest.raises(ModelError, match="checksum"):
        load_chip_bundle(tmp_path / "m")
    with pytest.raises(ModelError, match="channels"):
        save_chip_bundle(tmp_path / "m2", onnx_bytes, feature_names=names[:3], classes=[3, 5, 7])
        load_chip_bundle(tmp_path / "m2")


def _chip_config(tmp_path, model=None, output=None):
    from ecocube.config import config_from_dict
    from test_tile import cfg_dict

    data = cfg_dict(tmp_path, str(tmp_path / "store"))
    data["model"].update(model or {})
    data["output"].update(output or {})
    return config_from_dict(data)


def test_chip_config_defaults_and_errors(tmp_path):
    from ecocube.errors import ConfigError

    cfg = _chip_config(tmp_path, {"kind": "chip"})
    assert (cfg.model.chip.size, cfg.model.chip.overlap, cfg.model.chip.stitch) == (64, 16, "crop")
    assert cfg.model.chip.halo_pixels == 8
    assert "uncertainty" not in cfg.output.layers and "proba" in cfg.output.layers
    assert _chip_config(tmp_path, {"kind": "chip", "chip": {"stitch": "blend"}}).model.chip.halo_pixels == 16
    assert "uncertainty" in _chip_config(tmp_path).output.layers  # the ensemble's default is unchanged
    with pytest.raises(ConfigError, match="overlap"):
        _chip_config(tmp_path, {"kind": "chip", "chip": {"size": 16, "overlap": 16}})
    with pytest.raises(ConfigError, match="model.kind is not 'chip'"):
        _chip_config(tmp_path, {"chip": {"size": 32}})
    with pytest.raises(ConfigError, match="not uncertainty"):
        _chip_config(tmp_path, {"kind": "chip"}, {"layers": ["class", "uncertainty"]})
