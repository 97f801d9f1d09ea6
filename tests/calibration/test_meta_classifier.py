"""Meta classifiers and their scores (gradient paper §2–5)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from conf_plugins.calibration.entropy import normalized_entropy
from conf_plugins.calibration.gradient_metrics import last_layer_gradient_metrics
from conf_plugins.calibration.meta_classifier import (
    META_CLASSIFIERS,
    add_known_unknowns,
    build_meta_features,
    evaluate_meta_classifier,
    fit_meta_classifiers,
    meta_classification_scores,
)


def separable_problem(n, seed):
    """Correct samples (y=1) have low 'entropy'/'norm' features, wrong ones high; 2 noise cols."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(np.int64)
    informative = rng.normal(size=(n, 3)) + 3.0 * (1 - y)[:, None]
    return np.hstack([informative, rng.normal(size=(n, 2))]), y


@pytest.fixture(scope="module")
def fitted():
    X, y = separable_problem(600, seed=1)
    return fit_meta_classifiers(X, y, seed=0)


def test_every_meta_classifier_separates_a_separable_problem(fitted):
    X_test, y_test = separable_problem(400, seed=2)
    assert list(fitted) == list(META_CLASSIFIERS)
    for name, estimator in fitted.items():
        scores = evaluate_meta_classifier(estimator, X_test, y_test)
        assert scores["AUROC"] > 0.97, (name, scores)
        assert scores["AUPR_In"] > 0.97 and scores["AUPR_Out"] > 0.9, (name, scores)


def test_penalties_are_the_papers(fitted):
    lasso, ridge, enet = (fitted[n][-1] for n in ("lasso", "ridge", "elastic_net"))
    assert (lasso.penalty, lasso.C) == ("l1", 1.0)
    assert (ridge.penalty, ridge.C) == ("l2", 1.0)
    assert (enet.penalty, enet.C, enet.l1_ratio) == ("elasticnet", 1.0, 0.5)
    assert fitted["glm"][-1].penalty is None
    assert fitted["mlp"][-1].hidden_layer_sizes == (15,)


def test_scores_match_hand_computed_values():
    y = np.array([1, 1, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    got = meta_classification_scores(y, score)
    # AUROC: 5 of 6 (correct, wrong) pairs ordered; AP-In: (1 + 1 + 3/4)/3; AP-Out: (1 + 2/3)/2
    assert got == pytest.approx({"AUROC": 5 / 6, "AUPR_In": 11 / 12, "AUPR_Out": 5 / 6})


def test_evaluation_matches_sklearn_on_the_estimator_probabilities(fitted):
    X, y = separable_problem(300, seed=3)
    estimator = fitted["lasso"]
    p_correct = estimator.predict_proba(X)[:, list(estimator.classes_).index(1)]
    assert evaluate_meta_classifier(estimator, X, y) == pytest.approx(
        {
            "AUROC": roc_auc_score(y, p_correct),
            "AUPR_In": average_precision_score(y, p_correct),
            "AUPR_Out": average_precision_score(1 - y, -p_correct),
        }
    )


def test_known_unknowns_teach_the_classifier_to_flag_noise():
    """§5: noise that looks correct on the informative features but is extreme on feature 3,
    which carries no information in distribution (so a classifier trained without noise
    ignores it)."""
    rng = np.random.default_rng(0)
    X, y = separable_problem(600, seed=4)
    X_noise = rng.normal(size=(200, 5))
    X_noise[:, 3] += 8.0
    X_noise_test = X_noise[100:]
    X_aug, y_aug = add_known_unknowns(X, y, X_noise[:100])
    assert X_aug.shape == (700, 5) and y_aug[-100:].sum() == 0 and (y_aug[:600] == y).all()

    X_test, y_test = separable_problem(300, seed=5)
    test_correct = X_test[y_test == 1]
    X_eval = np.vstack([test_correct, X_noise_test])
    y_eval = np.r_[np.ones(len(test_correct)), np.zeros(len(X_noise_test))]
    plain = fit_meta_classifiers(X, y)["lasso"]
    augmented = fit_meta_classifiers(X_aug, y_aug)["lasso"]
    before = evaluate_meta_classifier(plain, X_eval, y_eval)["AUROC"]
    after = evaluate_meta_classifier(augmented, X_eval, y_eval)["AUROC"]
    assert after > 0.99 > before + 0.2, (before, after)


def test_build_meta_features_from_logits_and_gradient_metrics():
    logits = torch.randn(9, 4, dtype=torch.float64)
    features = torch.randn(9, 3, dtype=torch.float64)
    grads = last_layer_gradient_metrics(features, logits, metrics=("l2_norm", "min"))
    X, names = build_meta_features(logits, grads, include_max_softmax=True)
    assert names == ["entropy", "max_softmax", "l2_norm", "min"]
    np.testing.assert_allclose(X[:, 0], normalized_entropy(logits.softmax(1)).numpy())
    np.testing.assert_allclose(X[:, 1], logits.softmax(1).amax(1).numpy())
    np.testing.assert_allclose(X[:, 2], grads["l2_norm"].numpy())
    X, names = build_meta_features(logits, {"fc": grads, "conv": {"max": torch.zeros(9)}})
    assert names == ["entropy", "fc/l2_norm", "fc/min", "conv/max"] and X.shape == (9, 4)


def test_invalid_inputs_raise_clear_errors():
    X, y = separable_problem(50, seed=6)
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_meta_classifiers(X_nan, y)
    with pytest.raises(ValueError, match="single class"):
        fit_meta_classifiers(X, np.ones_like(y))
    with pytest.raises(ValueError, match="0 \\(wrong\\) or 1"):
        meta_classification_scores(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels"):
        fit_meta_classifiers(X, y[:-1])
    with pytest.raises(ValueError, match="columns"):
        add_known_unknowns(X, y, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one value per row"):
        build_meta_features(torch.randn(4, 3), {"l2_norm": torch.zeros(5)})
    with pytest.raises(ValueError, match="NaN"):
        build_meta_features(torch.tensor([[0.0, float("nan")]]))
