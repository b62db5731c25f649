"""The model bundle: a fitted model with what prediction needs to use it safely.

A bundle is a folder of two files:

- ``model.joblib``: the pickled estimator (compressed joblib);
- ``model.json``: the metadata: :data:`BUNDLE_FORMAT` and :data:`BUNDLE_VERSION`, the
  model file's SHA-256, the feature names in column order, the classes (code, name,
  colour) in probability column order, the package versions it was pickled with, and
  whatever the trainer adds (metrics, CV scheme, samples checksum, ...).

:func:`save_bundle` writes ``model.joblib`` first and ``model.json`` last, each under a
temporary name renamed into place, so a reader sees the old or the new bundle and
:func:`load_bundle` detects a mixed pair by the checksum. :func:`load_bundle` refuses a
bundle whose files are missing or corrupt, whose pickle comes from another major.minor
version of scikit-learn or LightGBM, or whose features differ from the caller's
(:func:`check_features`, order included).

Inference engines. Every base learner of a bundle runs through its pickled estimator
(the *native* engine, ``model.engine: stock``). A fast engine for a learner (see
:mod:`ecocube.engines`: built at training time, chosen by measurement) is saved as
``engine-<learner>.joblib`` beside the model and recorded in ``ModelBundle.engines`` —
learner name -> engine record (kind, file, SHA-256, the measured figures), under the
:data:`ENGINES_KEY` of ``model.json`` — next to the native model, which stays the
verified fallback. :func:`engine_records` reads the records back; ``load_bundle(...,
engine="auto")`` loads the engines into ``ModelBundle.engine_set`` and checks each against
its native learner (an engine that fails: a warning, and that learner runs natively). A
bundle without the key runs natively. This module records and checks; it neither builds
engines nor predicts tiles.

This module sits below :mod:`ecocube.ensemble`, :mod:`ecocube.train`, :mod:`ecocube.tile`
and :mod:`ecocube.predict` in the import graph: it imports none of them, so loading a
model never imports training code.
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, sha256_file, write_text_atomic
from .errors import ModelError

BUNDLE_FORMAT = "ecocube-model"
BUNDLE_VERSION = 1
MODEL_FILE = "model.joblib"
META_FILE = "model.json"
#: packages whose version a pickled model depends on (major.minor must match to load)
PICKLE_PACKAGES = ("scikit-learn", "lightgbm")
#: packages whose versions a bundle records
VERSION_PACKAGES = ("ecocube", "numpy", "scikit-learn", "lightgbm", "joblib")
#: key of ``model.json`` holding the per-learner inference engines (absent: all native)
ENGINES_KEY = "engines"
#: the engine every learner has: its pickled estimator, in ``model.joblib``
NATIVE_ENGINE = "native"


# ---------------------------------------------------------------------- versions, JSON


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a bundle depends on (``"not installed"`` if absent)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - not installed
            out[name] = "not installed"
    return out


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, date)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_json(obj):
    """Replace NaN/inf floats by None so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def strict_json(obj) -> str:
    """Indented, strict JSON (NaN/inf -> null; numpy scalars, arrays, paths, dates converted):
    the encoding of ``model.json`` and of the training report."""
    return json.dumps(_clean_json(json.loads(json.dumps(obj, default=_json_default))), indent=2, allow_nan=False)


# ---------------------------------------------------------------------- the bundle


@dataclass
class ModelBundle:
    """A fitted model with what prediction needs to use it safely.

    ``model`` is a fitted classifier with the scikit-learn API (in practice an
    :class:`ecocube.ensemble.EnsembleClassifier`); ``feature_names`` is the exact column
    order it was trained on; ``classes`` are the class codes in the model's probability
    column order, with their names and colours. ``engines`` maps a base learner's name to
    the record of a compiled inference engine for it (see the module docstring); learners
    without one run natively.
    """

    model: Any
    feature_names: list[str]
    classes: list[int]
    class_names: list[str]
    colors: list[str]
    metadata: dict = field(default_factory=dict)
    engines: dict[str, dict] = field(default_factory=dict)
    #: the loaded, verified engines (:class:`ecocube.engines.EngineSet`); None: every learner native
    engine_set: Any = field(default=None, repr=False, compare=False)

    def _check(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ModelError(
                f"the model expects {len(self.feature_names)} features ({', '.join(self.feature_names[:4])}, ...), "
                f"got an array of shape {X.shape}"
            )
        return X

    def predict_proba(self, X) -> np.ndarray:
        if self.engine_set is not None:
            return self.predict_proba_and_uncertainty(X)[0]
        return self.model.predict_proba(self._check(X))

    def predict(self, X) -> np.ndarray:
        return self.model.predict(self._check(X))

    def predict_uncertainty(self, X) -> np.ndarray:
        return self.model.predict_uncertainty(self._check(X))

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"`` (metadata ``task``; older bundles: classification)."""
        return str(self.metadata.get("task", "classification"))

    def predict_with_interval(self, X, coverage: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A regression bundle's ``(mean, lower, upper)``; ``coverage`` defaults to the one it was trained for
        (metadata ``interval_coverage``)."""
        if self.task != "regression":
            raise ModelError(f"a {self.task} bundle has no prediction intervals")
        level = float(coverage if coverage is not None else self.metadata.get("interval_coverage", 0.9))
        return self.model.predict_with_interval(self._check(X), coverage=level)

    def predict_proba_and_uncertainty(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Both at the cost of one pass of the base learners (what tile prediction needs)."""
        if self.engine_set is not None:
            return self.model.predict_proba_and_uncertainty(
                self._check(X), base_predictors=self.engine_set.base_predictors(self.model))
        return self.model.predict_proba_and_uncertainty(self._check(X))


def engine_records(meta: dict, where: str | Path = "model") -> dict[str, dict]:
    """The per-learner engine records of a bundle's metadata (``{}``: every learner native).

    Each record is a dict with at least ``"engine"`` (its kind); a learner absent from the
    mapping runs through its pickled estimator.
    """
    records = meta.get(ENGINES_KEY) or {}
    if not isinstance(records, dict) or not all(isinstance(r, dict) and "engine" in r for r in records.values()):
        raise ModelError(f"model bundle {where}: {ENGINES_KEY!r} in {META_FILE} must map learner names to "
                         f"records with an 'engine' field, got {records!r}")
    return {str(k): dict(v) for k, v in records.items()}


# ---------------------------------------------------------------------- save / load


def save_bundle(bundle: ModelBundle, folder: str | Path) -> Path:
    """Write ``model.joblib`` (compressed) then ``model.json`` (with the model's checksum).

    Each file is written to a temporary name and renamed, ``model.json`` last: a reader
    sees either the old or the new bundle, and :func:`load_bundle` detects a mismatch
    between the two files by the checksum.
    """
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILE
    with atomic_path(model_path) as tmp:
        joblib.dump(bundle.model, tmp, compress=3)
    n_in = getattr(bundle.model, "n_features_in_", None)
    if n_in is not None and n_in != len(bundle.feature_names):
        raise ModelError(f"bundle lists {len(bundle.feature_names)} feature names but the model takes {n_in}")
    meta = dict(bundle.metadata)
    meta.update({
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_file": MODEL_FILE,
        "model_sha256": sha256_file(model_path),
        "feature_names": list(bundle.feature_names),
        "n_features": len(bundle.feature_names),
        "classes": [{"code": int(c), "name": n, "color": col}
                    for c, n, col in zip(bundle.classes, bundle.class_names, bundle.colors)],
        "versions": package_versions(),
    })
    if bundle.engine_set is not None:  # engine files first, their records in model.json below
        from .engines import save_engines

        bundle.engines = save_engines(bundle.engine_set, folder)
    if bundle.engines:
        meta[ENGINES_KEY] = engine_records({ENGINES_KEY: bundle.engines}, folder)
    else:
        meta.pop(ENGINES_KEY, None)
    write_text_atomic(folder / META_FILE, strict_json(meta), fsync="file")
    return folder


def read_bundle_metadata(folder: str | Path) -> dict:
    """``model.json`` of a bundle, checked to be an ecocube bundle this version can read."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise ModelError(f"model bundle not found: {folder} has no {META_FILE} (train one with `ecocube train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"model bundle {meta_path} is not readable JSON: {exc}") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{meta_path} is not an ecocube model bundle (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > BUNDLE_VERSION:
        raise ModelError(f"model bundle {folder} has format version {meta['format_version']}; this ecocube reads "
                         f"up to {BUNDLE_VERSION}: upgrade ecocube")
    return meta


def check_versions_match(meta: dict, where: str | Path = "model") -> None:
    """Raise :class:`ModelError` when the bundle was pickled by another major.minor of a
    :data:`PICKLE_PACKAGES` package than this environment has."""
    here = package_versions()
    for pkg in PICKLE_PACKAGES:
        then = meta.get("versions", {}).get(pkg)
        if then and _major_minor(then) != _major_minor(here.get(pkg, "")):
            raise ModelError(
                f"model bundle {where} was saved with {pkg} {then}, this environment has {here.get(pkg)}; "
                f"pickled models are not portable across versions: retrain, or install {pkg}=={then}"
            )


def _load_model(model_path: Path, folder: Path):
    import joblib

    try:
        from sklearn.exceptions import InconsistentVersionWarning
    except ImportError:  # pragma: no cover - scikit-learn < 1.3
        InconsistentVersionWarning = UserWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            return joblib.load(model_path)
        except InconsistentVersionWarning as exc:
            raise ModelError(f"model bundle {folder}: {exc}") from None
        except Exception as exc:
            raise ModelError(f"model bundle {folder}: cannot load {model_path.name}: {exc}") from None


def load_bundle(folder: str | Path, expected_features: list[str] | None = None, *,
                check_versions: bool = True, engine: str = "auto") -> ModelBundle:
    """Load a bundle written by :func:`save_bundle`, refusing anything that does not fit.

    Raises :class:`ModelError` when the folder or a file is missing, the checksum differs,
    the bundle was pickled by another major.minor version of scikit-learn or LightGBM
    (``check_versions=False`` skips this at your own risk), or ``expected_features`` differs
    from the bundle's feature names — including the same names in another order, which
    would predict with shuffled features.

    ``engine``: ``"auto"`` loads the recorded inference engines and checks each against its
    native learner on the sample it keeps (an engine that fails: a warning naming the
    learner, which then runs natively; see :mod:`ecocube.engines`); ``"stock"`` ignores them.
    """
    if engine not in ("auto", "stock"):
        raise ValueError(f"engine must be 'auto' or 'stock', got {engine!r}")
    folder = Path(folder)
    meta = read_bundle_metadata(folder)
    if check_versions:
        check_versions_match(meta, folder)
    model_path = folder / meta.get("model_file", MODEL_FILE)
    if not model_path.exists():
        raise ModelError(f"model bundle {folder}: {model_path.name} is missing")
    if sha256_file(model_path) != meta.get("model_sha256"):
        raise ModelError(f"model bundle {folder}: {model_path.name} does not match the checksum in {META_FILE} "
                         "(corrupt, or from another training run)")
    names = list(meta.get("feature_names") or [])
    if expected_features is not None:
        check_features(names, list(expected_features), folder)
    engines = engine_records(meta, folder)
    model = _load_model(model_path, folder)
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and n_in != len(names):
        raise ModelError(f"model bundle {folder}: the model takes {n_in} features, {META_FILE} lists {len(names)}")
    classes = meta.get("classes") or []
    model_classes = [int(c) for c in getattr(model, "classes_", [])]
    if model_classes and model_classes != [int(c["code"]) for c in classes]:
        raise ModelError(f"model bundle {folder}: class codes in {META_FILE} {[c['code'] for c in classes]} "
                         f"differ from the model's {model_classes}")
    engine_set = None
    if engine == "auto" and engines:
        from .engines import load_engines

        engine_set = load_engines(model, folder, engines)
    return ModelBundle(model=model, feature_names=names, classes=[int(c["code"]) for c in classes],
                       class_names=[c["name"] for c in classes], colors=[c["color"] for c in classes], metadata=meta,
                       engines=engines, engine_set=engine_set)


def check_features(have: list[str], expected: list[str], where: str | Path = "model") -> None:
    """Raise :class:`ModelError` unless ``expected`` equals the model's feature names, in order."""
    if have == expected:
        return
    if sorted(have) == sorted(expected) and len(have) == len(expected):
        first = next(i for i, (a, b) in enumerate(zip(have, expected)) if a != b)
        raise ModelError(
            f"model bundle {where}: the features are the same but in another order (position {first}: model "
            f"{have[first]!r}, data {expected[first]!r}); refusing to predict with shuffled features"
        )
    missing = [n for n in have if n not in expected]
    extra = [n for n in expected if n not in have]
    raise ModelError(
        f"model bundle {where}: features do not match: the model needs {len(have)}, the data has {len(expected)}"
        + (f"; missing from the data: {', '.join(missing[:10])}" if missing else "")
        + (f"; not in the model: {', '.join(extra[:10])}" if extra else "")
        + " (were bands, season_size, features.indices or features.statistics changed since training?)"
    )
