"""Inception Score on predictions whose score is known exactly."""

import numpy as np
import pytest

from diffjax.metrics.inception_score import inception_score


def test_confident_balanced_predictions_score_the_number_of_classes():
    # Every split holds each of the 10 classes equally often, each predicted with certainty:
    # KL(p(y|x) || p(y)) = log 10 for every x, so IS = 10 in every split.
    classes = np.tile(np.arange(10), 100)
    logits = np.where(np.arange(10)[None] == classes[:, None], 60.0, -60.0)
    mean, std = inception_score(logits, shuffle_seed=None)
    assert mean == pytest.approx(10.0, rel=1e-12) and std < 1e-10


def test_predictions_that_ignore_the_image_score_one():
    logits = np.tile(np.random.default_rng(0).standard_normal(7), (200, 1))
    mean, std = inception_score(logits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std < 1e-12


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        inception_score(np.zeros(5))
    with pytest.raises(ValueError, match="num_splits must lie in"):
        inception_score(np.zeros((5, 3)), num_splits=10)
