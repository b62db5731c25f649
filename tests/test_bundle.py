"""Model bundle: engine records round trip and are checked; loading a model needs no training code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ecocube.bundle import ENGINES_KEY, ModelBundle, engine_records, load_bundle, save_bundle
from ecocube.errors import ModelError


def _bundle(**kw) -> tuple[ModelBundle, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat([3, 7], 20)
    X = (np.c_[y == 3, y == 7] + rng.normal(0, 0.3, (40, 2))).astype(np.float32)
    model = LogisticRegression().fit(X, y)
    return ModelBundle(model=model, feature_names=["a_s1", "b_s1"], classes=[3, 7], class_names=["x", "y"],
                       colors=["#000000", "#ffffff"], **kw), X


def test_bundle_without_engines_has_no_engines_key_and_loads_native(tmp_path):
    bundle, X = _bundle()
    folder = save_bundle(bundle, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    assert ENGINES_KEY not in meta
    loaded = load_bundle(folder, expected_features=["a_s1", "b_s1"])
    assert loaded.engines == {}
    np.testing.assert_array_equal(loaded.predict_proba(X), bundle.predict_proba(X))


def test_engine_records_round_trip(tmp_path):
    engines = {"lgbm": {"engine": "treelite", "file": "lgbm.so", "sha256": "ab" * 32}}
    bundle, _ = _bundle(engines=engines)
    folder = save_bundle(bundle, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    assert meta[ENGINES_KEY] == engines
    assert load_bundle(folder).engines == engines


def test_malformed_engine_records_are_refused(tmp_path):
    with pytest.raises(ModelError, match="learner names to records with an 'engine' field"):
        engine_records({ENGINES_KEY: {"rf": {"file": "rf.so"}}}, "here")
    bundle, _ = _bundle()
    folder = save_bundle(bundle, tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta[ENGINES_KEY] = ["treelite"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=f"model bundle {folder}: 'engines'"):
        load_bundle(folder)


@pytest.mark.slow
def test_loading_a_bundle_does_not_import_training_code():
    code = ("import sys, ecocube.bundle, ecocube.tile, ecocube.predict; "
            "print(sorted(m for m in sys.modules if m in ('ecocube.train', 'ecocube.ensemble')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
