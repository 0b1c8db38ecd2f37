"""The classical CAD baseline: hand-crafted features (:mod:`.radiomics`) + a scikit-learn SVM or random forest.

It is packaged like every model (``model.json`` + ``model.safetensors``, found by
:func:`cadcore.registry.packages.find_model`, run by ``cad classify``) but **without pickle**: unpickling a file runs
arbitrary code, and model packages are downloaded and shared, so no pickle/joblib file is ever read. Instead the package
stores what the estimator was fitted on, as tensors in ``model.safetensors`` (so the weights' sha256 check covers them):

* ``train_features`` (N, F) float64, ``train_labels`` (N,) int64, ``feature_names`` (UTF-8 bytes, one per line),
* ``feature_mean`` / ``feature_scale`` (F,): the standardisation fitted on the training features,
* ``reference_proba`` (R, C): the probabilities the trained model gave for R training rows,

and ``model.json`` stores the estimator kind and its hyper-parameters, including a fixed ``random_state``, under
``"network": {"name": "baseline", "params": {...}}``. Loading re-fits the estimator from those arrays: with a fixed
seed scikit-learn's SVC (libsvm + seeded Platt-scaling folds) and random forest are deterministic, and a refit of
~1-2k samples x ~40 features takes ~0.3 s for the SVM and ~1-2 s for the 500-tree forest (2 CPU cores). The load then
checks that the refit reproduces the stored standardisation and ``reference_proba``; if another scikit-learn version
fits differently, the package is refused (it would no longer be the model whose metrics the card reports) rather
than silently giving other numbers. For the same reason a package whose card records another feature-extractor
version (``network.params.features.version``) than :data:`.radiomics.FEATURES_VERSION` is refused before anything
is loaded: it was trained on features this engine no longer computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cadcore.errors import CadError
from cadcore.registry.packages import ModelPackage

KINDS = ("svm", "rf")
N_TREES = 500
SEARCH_TREES = 100  # the forest's grid search scores with fewer trees (depth/leaf choice, not accuracy, matters)
REFERENCE_ROWS = 64
REPRODUCE_ATOL = 1e-6
GRIDS: dict[str, dict[str, list[Any]]] = {
    "svm": {"C": [0.1, 1.0, 10.0, 100.0, 1000.0], "gamma": [0.0001, 0.001, 0.01, 0.1]},
    "rf": {"max_depth": [None, 4, 8], "min_samples_leaf": [1, 5, 20]},
}
DEFAULTS: dict[str, dict[str, Any]] = {"svm": {"C": 1.0, "gamma": 0.01},
                                       "rf": {"max_depth": None, "min_samples_leaf": 1}}


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise CadError(f"unknown baseline kind {kind!r} (expected one of {', '.join(KINDS)})")
    return kind


def _clean_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Only the searched hyper-parameters may come from a card: it cannot pass arbitrary arguments to scikit-learn."""
    unknown = sorted(set(params) - set(GRIDS[kind]))
    if unknown:
        raise CadError(f"baseline {kind} does not take hyper-parameter(s) {', '.join(unknown)}")
    return {**DEFAULTS[kind], **params}


def make_estimator(kind: str, params: dict[str, Any], seed: int, folds: int = 5, search: bool = False) -> Any:
    """StandardScaler + the estimator; the scaler is harmless for the forest and keeps both kinds alike.

    The SVM's probabilities are Platt scaling fitted on out-of-fold decision values (``CalibratedClassifierCV``,
    sigmoid, ``ensemble=False``: one SVC on all the data), what ``SVC(probability=True)`` did before scikit-learn 1.9
    deprecated it, with our own seeded folds. ``search=True`` gives the cheaper estimator the grid search scores:
    the bare SVC (AUC ranks by the decision function) and a forest of :data:`SEARCH_TREES` trees.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    params = _clean_params(_check_kind(kind), params)
    if kind == "svm":
        model = SVC(kernel="rbf", class_weight="balanced", random_state=seed, **params)
        if not search:
            model = CalibratedClassifierCV(model, method="sigmoid", ensemble=False,
                                           cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    else:
        model = RandomForestClassifier(n_estimators=SEARCH_TREES if search else N_TREES,
                                       class_weight="balanced_subsample", random_state=seed, n_jobs=1, **params)
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def _checked_training(features: np.ndarray, labels: np.ndarray, feature_names: list[str]):
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise CadError(f"features must be (N, F) with one label per row, got {features.shape} and {labels.shape}")
    if features.shape[1] != len(feature_names) or len(set(feature_names)) != len(feature_names):
        raise CadError(f"{len(feature_names)} feature names (must be unique) for {features.shape[1]} columns")
    if not np.isfinite(features).all():
        raise CadError("training features contain NaN or inf")
    if not np.array_equal(labels, labels.astype(np.int64)):
        raise CadError("class labels must be integers")
    labels = labels.astype(np.int64)
    counts = np.unique(labels, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < 2:
        raise CadError(f"need at least two classes with two samples each, got class counts {counts.tolist()}")
    return features, labels, counts


def train_baseline(features: np.ndarray, labels: np.ndarray, kind: str, feature_names: list[str],
                   seed: int = 0) -> BaselineClassifier:
    """Choose hyper-parameters by stratified-CV grid search (ROC AUC), then fit on all the training features.

    The search is deterministic (fixed fold shuffle and estimator seeds, ``n_jobs=1``, ties go to the first grid
    point) so the same features always give the same package.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    _check_kind(kind)
    features, labels, counts = _checked_training(features, labels, list(feature_names))
    folds = int(min(5, counts.min()))
    search_estimator = make_estimator(kind, {}, seed, search=True)
    grid = {f"model__{name}": values for name, values in GRIDS[kind].items()}
    scoring = "roc_auc" if len(counts) == 2 else "roc_auc_ovr"
    search = GridSearchCV(search_estimator, grid, scoring=scoring, n_jobs=1, refit=False, error_score="raise",
                          cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    search.fit(features, labels)
    params = {name.removeprefix("model__"): value for name, value in search.best_params_.items()}
    selection = {"method": "GridSearchCV", "grid": GRIDS[kind], "scoring": scoring, "cv": f"StratifiedKFold({folds})",
                 "best_cv_score": round(float(search.best_score_), 5)}
    if kind == "rf":
        selection["search_trees"] = SEARCH_TREES
    return BaselineClassifier.fit(kind, params, features, labels, list(feature_names), seed, selection)


@dataclass
class BaselineClassifier:
    """A fitted baseline and everything needed to fit it again identically (see the module docstring)."""

    kind: str
    params: dict[str, Any]
    seed: int
    feature_names: list[str]
    train_features: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    estimator: Any = field(repr=False)
    selection: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, kind: str, params: dict[str, Any], features: np.ndarray, labels: np.ndarray,
            feature_names: list[str], seed: int = 0, selection: dict[str, Any] | None = None) -> BaselineClassifier:
        features, labels, counts = _checked_training(features, labels, feature_names)
        estimator = make_estimator(kind, params, seed, folds=int(min(5, counts.min())))
        try:
            estimator.fit(features, labels)
        except ValueError as exc:  # scikit-learn's InvalidParameterError is a ValueError
            raise CadError(f"cannot fit the {kind} baseline ({exc})") from exc
        return cls(kind, _clean_params(kind, params), int(seed), list(feature_names), features, labels, estimator,
                   dict(selection or {}))

    @property
    def classes(self) -> np.ndarray:
        """Class values, in the order of :meth:`predict_proba`'s columns (ascending)."""
        return np.asarray(self.estimator.classes_)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """``(N, n_classes)`` probabilities for ``(N, F)`` features in :attr:`feature_names` order."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim == 1:
            features = features[None]
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise CadError(f"expected (N, {len(self.feature_names)}) features, got {features.shape}")
        if not np.isfinite(features).all():
            raise CadError("features contain NaN or inf")
        return np.asarray(self.estimator.predict_proba(features), dtype=np.float64)

    def vector(self, features: dict[str, float]) -> np.ndarray:
        """One row in this model's feature order, from :func:`.radiomics.extract_features`' dict."""
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise CadError(f"the baseline needs features this extractor does not give: {', '.join(missing[:5])}")
        return np.array([float(features[name]) for name in self.feature_names], dtype=np.float64)

    def reference_rows(self) -> np.ndarray:
        return np.unique(np.linspace(0, len(self.train_labels) - 1, REFERENCE_ROWS).round().astype(np.int64))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` holds: the training arrays, the standardisation and a reproducibility check."""
        scaler = self.estimator.named_steps["scale"]
        reference = self.predict_proba(self.train_features[self.reference_rows()])
        names = "\n".join(self.feature_names).encode("utf-8")
        return {
            "train_features": torch.from_numpy(self.train_features.copy()),
            "train_labels": torch.from_numpy(self.train_labels.copy()),
            "feature_names": torch.frombuffer(bytearray(names), dtype=torch.uint8).clone(),
            "feature_mean": torch.from_numpy(np.asarray(scaler.mean_, dtype=np.float64).copy()),
            "feature_scale": torch.from_numpy(np.asarray(scaler.scale_, dtype=np.float64).copy()),
            "reference_proba": torch.from_numpy(reference),
        }

    def card_section(self) -> dict[str, Any]:
        """The card's ``network`` section, with the hyper-parameters the grid search chose."""
        return baseline_card_section(self.kind, self.seed, self.feature_names, self.params, self.selection)

    @classmethod
    def from_package(cls, package: ModelPackage) -> BaselineClassifier:
        """Re-fit the baseline from a verified package (sha256 checked by ``load_state_dict``) and check the refit."""
        network = package.card.network
        params = dict(network.get("params", {}))
        if not package.card.is_baseline:
            raise CadError(f"not a baseline package (network {network.get('name')!r})", package.folder)
        kind = _check_kind(str(params.get("kind")))
        _check_features_version(params.get("features", {}).get("version"), package)
        state = package.load_state_dict()
        needed = ("train_features", "train_labels", "feature_names", "feature_mean", "feature_scale",
                  "reference_proba")
        missing = [name for name in needed if name not in state]
        if missing:
            raise CadError(f"baseline weights lack {', '.join(missing)}", package.weights_path)
        names = bytes(state["feature_names"].numpy()).decode("utf-8").split("\n")
        card_names = params.get("features", {}).get("names")
        if card_names is not None and list(card_names) != names:
            raise CadError("the card's feature names differ from those in the weights", package.folder)
        classifier = cls.fit(kind, dict(params.get("hyperparameters", {})), state["train_features"].numpy(),
                             state["train_labels"].numpy(), names, int(params.get("random_state", 0)),
                             params.get("model_selection"))
        card_classes = sorted(c.value for c in package.card.classes)
        if card_classes and card_classes != classifier.classes.tolist():
            raise CadError(f"card classes {card_classes} differ from the training labels "
                           f"{classifier.classes.tolist()}", package.folder)
        classifier._check_reproduced(state, package)
        return classifier

    def _check_reproduced(self, state: dict[str, torch.Tensor], package: ModelPackage) -> None:
        import sklearn

        scaler = self.estimator.named_steps["scale"]
        same_scaling = np.allclose(scaler.mean_, state["feature_mean"].numpy(), rtol=1e-9, atol=1e-12) and np.allclose(
            scaler.scale_, state["feature_scale"].numpy(), rtol=1e-9, atol=1e-12)
        reference = state["reference_proba"].numpy()
        rows = self.reference_rows()
        probabilities = self.predict_proba(self.train_features[rows]) if len(rows) == len(reference) else None
        if not same_scaling or probabilities is None or probabilities.shape != reference.shape or not np.allclose(
                probabilities, reference, rtol=0, atol=REPRODUCE_ATOL):
            trained = package.card.network.get("params", {}).get("framework", {}).get("scikit-learn", "unknown")
            raise CadError(f"refitting the baseline does not reproduce the trained model (trained with scikit-learn "
                           f"{trained}, installed {sklearn.__version__}); retrain it or install that version",
                           package.folder)


def _check_features_version(version: Any, package: ModelPackage) -> None:
    """Refuse a package trained on another feature definition: its scores would silently mean something else.

    The stored training features were computed by the extractor version the card records; the features of a new case
    come from this engine's :data:`.radiomics.FEATURES_VERSION`. If the definitions differ (version 2 changed the
    surface area, so sphericity and surface/volume ratio too), the estimator would compare incomparable numbers.
    """
    from cadcore.classification.radiomics import FEATURES_VERSION

    if version != FEATURES_VERSION:
        trained = "no recorded features version" if version is None else f"features version {version}"
        raise CadError(f"trained on {trained}; this engine computes version {FEATURES_VERSION}: retrain it",
                       package.folder)


def roi_feature_spacing(roi_spec: Mapping[str, Any], grid_spacing: Sequence[float]) -> tuple[float, float, float]:
    """The spacing to compute baseline features with on a ``cad classify`` ROI (training must use the same rule).

    An extent-fitted ROI (``fit: extent``, MedMNIST style) scales every lesion to fill the block, so its features are
    in ROI-voxel units, spacing (1, 1, 1): the units of MedMNIST's arrays, and the same for a MedMNIST sample and a
    real CT lesion. A fixed-spacing ROI keeps millimetres.
    """
    if roi_spec.get("fit") == "extent":
        return (1.0, 1.0, 1.0)
    spacing = tuple(float(s) for s in grid_spacing)
    if len(spacing) != 3:
        raise CadError(f"ROI spacing must have three values, got {spacing}")
    return spacing[0], spacing[1], spacing[2]


def baseline_card_section(kind: str, seed: int, feature_names: list[str], params: dict[str, Any] | None = None,
                          selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card's ``network`` section for a baseline: kind, hyper-parameters, seed, features and versions.

    ``card["network"] = baseline_card_section(...)`` in a card that also has ``id``, ``version``,
    ``task: classification`` and ``classes``. Pass the *chosen* ``params`` (or use
    :meth:`BaselineClassifier.card_section`): the load refits with them, and refuses a package whose refit does not
    reproduce the stored reference probabilities.
    """
    import sklearn

    from cadcore.classification.radiomics import FEATURES_VERSION, N_LEVELS

    _check_kind(kind)
    estimator = ("CalibratedClassifierCV(SVC(kernel=rbf, class_weight=balanced), sigmoid, stratified 5-fold, "
                 "ensemble=False)") if kind == "svm" else (
        f"RandomForestClassifier(n_estimators={N_TREES}, class_weight=balanced_subsample)")
    return {"name": "baseline", "params": {
        "kind": kind,
        "estimator": f"StandardScaler + {estimator}",
        "random_state": int(seed),
        "hyperparameters": _clean_params(kind, dict(params or {})),
        "model_selection": dict(selection or {}),
        "features": {"extractor": "cadcore.classification.radiomics.extract_features", "version": FEATURES_VERSION,
                     "glcm_levels": N_LEVELS, "names": list(feature_names)},
        "framework": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
    }}
