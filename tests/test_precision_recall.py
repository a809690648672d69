"""Improved precision and recall on point sets whose answer is known by construction."""

import numpy as np
import pytest

from diffjax.metrics.precision_recall import precision_recall


def _line(count, offset=0.0):
    points = np.zeros((count, 2))
    points[:, 0] = np.arange(count) + offset
    return points


def test_identical_sets_have_full_precision_and_recall():
    points = np.random.default_rng(0).standard_normal((200, 5))
    assert precision_recall(points, points, block_size=64) == (1.0, 1.0)


def test_a_half_covered_set():
    # Real points 0..99 on a line: the 3rd neighbour of an interior point is 3 away (of an end
    # point 3 as well). Generated points: 50 inside (at half-integers 0.5..49.5) and 50 far off.
    real = _line(100)
    generated = np.concatenate([_line(50, 0.5), _line(50, 1000.0)])
    precision, recall = precision_recall(real, generated, block_size=16)
    assert precision == 0.5
    # Generated balls: the inside half-integers cover 0..52 (radius 3 around 0.5..49.5 reaches
    # 52.5), the far half covers no real point: recall = 53 / 100.
    assert recall == 0.53


def test_disjoint_sets_have_zero_precision_and_recall():
    assert precision_recall(_line(20), _line(20, 500.0)) == (0.0, 0.0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="same D"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="more than k = 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
