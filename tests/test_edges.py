"""Edge maps and control agreement (diffjax/metrics/edges.py): the Sobel magnitude equals
SciPy's Sobel filter, edge maps mark steps, and the F-measure and IoU are 1 for agreeing maps,
0 for distant ones, and tolerate shifts of up to ``tolerance`` pixels."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from diffjax.metrics.edges import edge_f1, edge_map, outline_iou, sobel_magnitude


def test_the_sobel_magnitude_is_scipys_sobel_filter():
    images = np.random.default_rng(0).uniform(size=(2, 9, 11, 3)).astype(np.float32)
    ours = np.asarray(sobel_magnitude(images))
    for b in range(2):
        for c in range(3):
            channel = images[b, :, :, c].astype(np.float64)
            # SciPy's Sobel: derivative [-1, 0, 1] times smoothing [1, 2, 1]; 'nearest' is
            # our border extension. Divided by 4 (our normalisation).
            gx = ndimage.sobel(channel, axis=1, mode="nearest") / 4
            gy = ndimage.sobel(channel, axis=0, mode="nearest") / 4
            np.testing.assert_allclose(ours[b, :, :, c], np.hypot(gx, gy), atol=1e-6)


def test_an_edge_map_marks_a_step_and_nothing_on_flat_images():
    step = -np.ones((1, 8, 8, 1), np.float32)
    step[:, :, 4:] = 1.0
    edges = np.asarray(edge_map(step))
    # A unit step has magnitude 1 on the two columns beside it and 0 elsewhere.
    expected = np.zeros((1, 8, 8, 1), np.float32)
    expected[:, :, 3:5] = 1.0
    np.testing.assert_array_equal(edges, expected)
    assert np.asarray(edge_map(np.full((1, 8, 8, 3), 0.3, np.float32))).sum() == 0


def _dot(row, col, size=12):
    image = np.zeros((1, size, size, 1), np.float32)
    image[0, row, col] = 1.0
    return image


def test_f1_and_iou_are_one_for_equal_maps_and_zero_for_distant_ones():
    a, far = _dot(2, 2), _dot(9, 9)
    for metric in (edge_f1, outline_iou):
        assert float(metric(a, a)[0]) == 1.0
        assert float(metric(a, far)[0]) == 0.0
        assert float(metric(np.zeros_like(a), np.zeros_like(a))[0]) == 1.0


def test_a_shift_within_the_tolerance_counts_and_beyond_it_does_not():
    a, shifted = _dot(5, 5), _dot(6, 6)
    assert float(edge_f1(a, shifted, tolerance=1)[0]) == 1.0
    assert float(edge_f1(a, shifted, tolerance=0)[0]) == 0.0
    # Two 3x3 squares offset diagonally by one share 4 of their 14 pixels.
    np.testing.assert_allclose(float(outline_iou(a, shifted, tolerance=1)[0]), 4 / 14)


def test_precision_and_recall_combine_harmonically():
    target = np.zeros((1, 12, 12, 1), np.float32)
    target[0, 2, 2:10] = 1.0  # 8 target pixels
    predicted = np.zeros_like(target)
    predicted[0, 2, 2:6] = 1.0  # 4 predicted, all on the target: P = 1, R = 4 / 8
    predicted[0, 9, 2:6] = 1.0  # 4 more, far away: P = 1 / 2
    np.testing.assert_allclose(float(edge_f1(predicted, target, tolerance=0)[0]), 0.5)


def test_maps_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        edge_f1(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 9, 1)))
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        outline_iou(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)), tolerance=-1)
