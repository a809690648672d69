"""The control datasets (diffjax/data/datasets/control.py): circles are a fixed function of
their split, their outlines lie on the circles' edges, Fashion-MNIST's control is the Sobel
edge map of each image, and both reach the batches as ``cond['control']``."""

import numpy as np
import pytest

from diffjax.data.datasets.control import draw_circles, load_circles, load_fashion_mnist_edges
from diffjax.data.pipeline import create_dataset, get_dataset_info
from diffjax.metrics.edges import edge_map, outline_iou


def test_circles_are_a_fixed_function_of_the_split():
    first, _ = load_circles("test", 16)
    images, outlines = draw_circles(np.random.default_rng(1), 2000, 16)
    np.testing.assert_array_equal(first["image"], images)
    np.testing.assert_array_equal(first["cond"]["control"], outlines)
    assert images.shape == (2000, 16, 16, 3) and outlines.shape == (2000, 16, 16, 1)
    assert images.min() >= -1 and images.max() <= 1
    assert set(np.unique(outlines)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="splits"):
        load_circles("validation", 16)
    with pytest.raises(ValueError, match="image_size >= 16"):
        load_circles("test", 8)


def test_each_outline_follows_its_circles_edges():
    images, outlines = draw_circles(np.random.default_rng(0), 200, 32)
    matched = np.asarray(outline_iou(edge_map(images), outlines)).mean()
    shuffled = np.asarray(outline_iou(edge_map(images), np.roll(outlines, 1, axis=0))).mean()
    # An outline is closer to its own circle's edges than to another circle's.
    assert matched > 2 * shuffled


def test_batches_of_circles_hold_the_control():
    info = get_dataset_info(name="circles", split="test", image_size=16)
    assert info.cond_spec == (("control", (16, 16, 1), "float32"),)
    dataset = create_dataset(name="circles", split="test", image_size=16, batch_size=4, seed=0)
    with iter(dataset) as iterator:
        batch = next(iterator)
    assert batch["image"].shape == (4, 16, 16, 3)
    assert batch["cond"]["control"].shape == (4, 16, 16, 1)


def test_fashion_mnist_edges_are_the_sobel_maps_of_the_images():
    arrays, num_classes = load_fashion_mnist_edges("test", 28)
    assert num_classes == 10
    images, cond = arrays["image"], arrays["cond"]
    assert images.shape == (10000, 28, 28, 1) and cond["label"].shape == (10000,)
    np.testing.assert_array_equal(cond["control"][:64], np.asarray(edge_map(images[:64])))
    with pytest.raises(ValueError, match="28x28"):
        load_fashion_mnist_edges("test", 32)
