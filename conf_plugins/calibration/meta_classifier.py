"""Meta classification: is a prediction correct? (gradient paper §2–5).

A meta classifier maps per-sample uncertainty features — normalised entropy (paper eq. 1),
optionally the max softmax (eq. 2), and gradient metrics (:mod:`.gradient_metrics`) — to
the probability that the network's prediction is correct. Label convention everywhere:
``y = 1`` correct ("In", the positive class of AUROC and AUPR-In), ``y = 0`` wrong or
out-of-distribution ("Out").

Classifiers (§3–4), each a ``Pipeline(StandardScaler, estimator)``:

* ``glm``: unpenalised logistic regression (the paper's GLM with logit link);
* ``lasso`` / ``ridge``: L1 / L2 penalty with λ = 1, i.e. scikit-learn's ``C = 1/λ = 1``;
* ``elastic_net``: ``λ₁ = λ₂ = 0.5``, i.e. ``C = 1``, ``l1_ratio = 0.5`` (scikit-learn's
  penalty is ``l1_ratio·‖w‖₁ + (1 − l1_ratio)/2·‖w‖²``);
* ``mlp``: one hidden layer of 15 ReLUs, L2 weight decay 1e-3, trained by SGD with momentum
  0.9 and batch size 256 as in the paper; the paper's lr schedule (0.1 divided by 10 on
  plateaus) is approximated by scikit-learn's ``'adaptive'`` schedule from 0.01.

Scores (§2): AUROC, AUPR-In (correct = positive, score as is) and AUPR-Out (wrong =
positive, score negated, as in Hendrycks & Gimpel), from scikit-learn's ``roc_auc_score``
and ``average_precision_score``.
"""

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .entropy import entropy_from_logits

META_CLASSIFIERS = ("glm", "lasso", "ridge", "elastic_net", "mlp")


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def build_meta_features(
    logits, gradient_metrics: Mapping | None = None, include_max_softmax: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Feature matrix ``[N, F]`` (float64) and its column names.

    Args:
        logits: ``[N, C]`` classifier logits (flatten pixels to rows beforehand).
        gradient_metrics: ``{metric: [N]}`` as returned by
            :func:`~.gradient_metrics.last_layer_gradient_metrics`, or nested
            ``{layer: {metric: [N]}}`` as returned by
            :func:`~.gradient_metrics.per_layer_gradient_metrics` (columns ``layer/metric``).
        include_max_softmax: add the softmax baseline (eq. 2) as a feature. Off by default:
            the paper's meta classifiers use entropy and gradient metrics and keep the
            softmax baseline apart as the reference they are compared with (Tables 2, 3).

    Columns: ``entropy``, [``max_softmax``], then the gradient metrics in the given order.
    """
    logits = torch.as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    columns = {"entropy": entropy_from_logits(logits.double(), dim=1)}
    if include_max_softmax:
        columns["max_softmax"] = logits.double().softmax(1).amax(1)
    for name, value in (gradient_metrics or {}).items():
        if isinstance(value, Mapping):
            columns.update({f"{name}/{metric}": v for metric, v in value.items()})
        else:
            columns[name] = value
    arrays = {name: _to_numpy(v).reshape(-1) for name, v in columns.items()}
    bad = [name for name, v in arrays.items() if v.shape[0] != logits.shape[0]]
    if bad:
        raise ValueError(f"features {bad} do not have one value per row of logits ({logits.shape[0]})")
    X = np.stack(list(arrays.values()), axis=1)
    _check_features(X)
    return X, list(arrays)


def _check_features(X: np.ndarray) -> None:
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [N, F] matrix, got shape {X.shape}")
    if not np.isfinite(X).all():
        rows, cols = np.nonzero(~np.isfinite(X))
        raise ValueError(f"features contain NaN or inf (first at row {rows[0]}, column {cols[0]})")


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = _to_numpy(X), _to_numpy(y).reshape(-1)
    _check_features(X)
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{X.shape[0]} feature rows but {y.shape[0]} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (wrong) or 1 (correct)")
    if np.unique(y).size < 2:
        raise ValueError(
            "labels contain a single class; meta classification needs both correct (1) and wrong (0) samples"
        )
    return X, y.astype(np.int64)


def make_meta_classifiers(seed: int = 0) -> dict:
    """Unfitted meta classifiers of §3–4 (see module docstring), keyed by name."""

    def scaled(estimator):
        return make_pipeline(StandardScaler(), estimator)

    return {
        "glm": scaled(LogisticRegression(penalty=None, solver="lbfgs", max_iter=1000)),
        "lasso": scaled(LogisticRegression(penalty="l1", C=1.0, solver="liblinear", random_state=seed)),
        "ridge": scaled(LogisticRegression(penalty="l2", C=1.0, solver="lbfgs", max_iter=1000)),
        "elastic_net": scaled(
            LogisticRegression(
                penalty="elasticnet", C=1.0, l1_ratio=0.5, solver="saga", max_iter=5000, random_state=seed
            )
        ),
        "mlp": scaled(
            MLPClassifier(
                hidden_layer_sizes=(15,),
                activation="relu",
                alpha=1e-3,
                solver="sgd",
                momentum=0.9,
                batch_size=256,
                learning_rate="adaptive",
                learning_rate_init=0.01,
                max_iter=500,
                random_state=seed,
            )
        ),
    }


def fit_meta_classifiers(X_train, y_train, seed: int = 0) -> dict:
    """Fit every classifier of :func:`make_meta_classifiers` on ``(X_train, y_train)``."""
    X, y = _check_xy(X_train, y_train)
    estimators = make_meta_classifiers(seed)
    estimators["mlp"].set_params(mlpclassifier__batch_size=min(256, len(X)))
    return {name: est.fit(X, y) for name, est in estimators.items()}


def meta_classification_scores(y_correct, score) -> dict[str, float]:
    """AUROC, AUPR-In and AUPR-Out of a score that is high for correct predictions (§2).

    Also the paper's threshold meta classification with a single metric (Table 1): pass
    e.g. ``-entropy`` or ``max softmax`` as ``score``.
    """
    score = _to_numpy(score).reshape(-1)
    X, y = _check_xy(score[:, None], y_correct)
    score = X[:, 0]
    return {
        "AUROC": float(roc_auc_score(y, score)),
        "AUPR_In": float(average_precision_score(y, score)),
        "AUPR_Out": float(average_precision_score(1 - y, -score)),
    }


def evaluate_meta_classifier(estimator, X, y) -> dict[str, float]:
    """Scores of a fitted meta classifier, its probability of "correct" as the score."""
    X, y = _check_xy(X, y)
    positive = list(estimator.classes_).index(1)
    return meta_classification_scores(y, estimator.predict_proba(X)[:, positive])


def add_known_unknowns(X, y, X_noise) -> tuple[np.ndarray, np.ndarray]:
    """Append features of out-of-distribution inputs labelled wrong (0): §5 "known unknowns".

    ``X_noise`` are the features of, e.g., uniform-noise images run through the same network
    (the paper adds 200 of them; noise "is virtually available at no cost").
    """
    X, y = _to_numpy(X), _to_numpy(y).reshape(-1)
    X_noise = _to_numpy(X_noise)
    _check_features(X)
    _check_features(X_noise)
    if X_noise.shape[1] != X.shape[1]:
        raise ValueError(f"noise features have {X_noise.shape[1]} columns, expected {X.shape[1]}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{X.shape[0]} feature rows but {y.shape[0]} labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (wrong) or 1 (correct)")
    return (
        np.concatenate([X, X_noise]),
        np.concatenate([y.astype(np.int64), np.zeros(len(X_noise), dtype=np.int64)]),
    )
