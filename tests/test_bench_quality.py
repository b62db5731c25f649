"""scripts/bench/quality.py's bookkeeping (pure): the summary of the scores over fold draws."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_quality", Path(__file__).resolve().parents[1] / "scripts" / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quality)


def _run(wf1, oa, mf1, ll, per_class):
    return {"f1_weighted": wf1, "overall_accuracy": oa, "f1_macro": mf1, "log_loss": ll, "per_class_f1": per_class}


def test_summary_means_the_draws_and_names_the_chosen_combiners():
    per = {"ens": [_run(0.6, 0.5, 0.4, 1.0, [0.2, 0.8]), _run(0.8, 0.7, 0.6, 2.0, [0.4, 0.6])],
           "ens | mean": [_run(0.5, 0.5, 0.5, 0.5, [0.5, 0.5])]}
    out = quality._summarise(per, np.array([11, 13]), 12.5, {"mean": {"mean": 5}, "other": {"x": 1}})
    ens = out["ens"]
    assert ens["f1_weighted"] == pytest.approx(0.7) and ens["overall_accuracy"] == pytest.approx(0.6)
    assert ens["f1_macro"] == pytest.approx(0.5) and ens["log_loss"] == pytest.approx(1.5)
    assert ens["per_class_f1"] == {11: pytest.approx(0.3), 13: pytest.approx(0.7)}
    assert ens["f1_weighted_per_repeat"] == [0.6, 0.8]
    assert ens["f1_weighted_sd"] == pytest.approx(0.1414213562)  # sd of (0.6, 0.8), ddof 1
    assert ens["seconds"] == 12.5 and "chosen_per_fold" not in ens
    assert out["ens | mean"]["f1_weighted_sd"] == 0.0  # one draw
    assert out["ens | mean"]["chosen_per_fold"] == {"mean": 5}
    assert set(quality._summarise(per, np.array([11, 13]), 1.0)["ens | mean"]) == {
        "f1_weighted", "overall_accuracy", "f1_macro", "log_loss", "per_class_f1", "f1_weighted_per_repeat",
        "f1_weighted_sd", "seconds"}
