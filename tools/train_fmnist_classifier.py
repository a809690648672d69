"""Trains the FD-FMNIST feature network and writes the weights that diffjax ships.

Trains :class:`diffjax.metrics.fmnist_classifier.FashionMnistClassifier` on the 60,000
Fashion-MNIST training images (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) with the recipe
recorded in that module (``TRAINING_SEED``, ``TRAINING_EPOCHS``, ``TRAINING_BATCH_SIZE``,
``TRAINING_LEARNING_RATE``): Adam, a linear warm-up over the first epoch then cosine decay to
zero, softmax cross-entropy, no augmentation, the training set reshuffled every epoch by a NumPy
generator seeded with ``TRAINING_SEED``; a final batch smaller than ``TRAINING_BATCH_SIZE`` is
dropped. It then evaluates on the 10,000 test images, writes the safetensors file and prints its
SHA-256 and the test accuracy, to be recorded as ``FMNIST_CLASSIFIER_SHA256`` and
``FMNIST_CLASSIFIER_TEST_ACCURACY``.

Given the seed the run is deterministic on one machine and jaxlib version (one CPU device, the
fast-convolution XLA flag of :mod:`diffjax.cli`); another CPU or jaxlib may round
differently and so write a file with another checksum.

Usage::

    python tools/train_fmnist_classifier.py [--idx_dir DIR] [--output PATH]
"""

from __future__ import annotations

import argparse
import os
import time

from diffjax.cli import enable_fast_cpu_convolutions

enable_fast_cpu_convolutions()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffjax.data.datasets.fashion_mnist import (  # noqa: E402
    DEFAULT_IDX_DIR,
    IDX_DIR_ENV,
    IDX_FILES,
    find_idx_files,
    read_idx,
)
from diffjax.metrics import fmnist_classifier as fc  # noqa: E402
from diffjax.weights.files import sha256_of_file  # noqa: E402

_EVAL_BATCH_SIZE = 1000


def _load_split(paths: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``[N, 28, 28, 1]`` and int32 labels ``[N]`` of ``"train"`` or ``"test"``."""
    images = read_idx(paths[f"{split}_images"])[..., None]
    labels = read_idx(paths[f"{split}_labels"]).astype(np.int32)
    return images, labels


def _make_train_step(optimizer: optax.GradientTransformation):
    """A jitted ``(params, opt_state, images, labels) -> (params, opt_state, loss)``."""
    model = fc.FashionMnistClassifier()

    def loss_fn(params, images, labels):
        logits = model.apply({"params": params}, images)["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def _accuracy(variables, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the classifier on ``images`` (evaluated in batches)."""
    correct = 0
    for start in range(0, images.shape[0], _EVAL_BATCH_SIZE):
        logits = fc.fmnist_features(variables, images[start : start + _EVAL_BATCH_SIZE])["logits"]
        predictions = np.asarray(jnp.argmax(logits, axis=-1))
        correct += int(np.sum(predictions == labels[start : start + _EVAL_BATCH_SIZE]))
    return correct / images.shape[0]


def train(idx_dir: str, output: str) -> None:
    """Trains with the recorded recipe, evaluates, writes ``output`` and prints the results."""
    paths = find_idx_files(idx_dir)
    if paths is None:
        raise FileNotFoundError(
            f"The Fashion-MNIST IDX files ({', '.join(IDX_FILES.values())}) are not all in "
            f"{idx_dir}; install them with `apt-get install dataset-fashion-mnist` or pass "
            f"--idx_dir."
        )
    train_images, train_labels = _load_split(paths, "train")
    test_images, test_labels = _load_split(paths, "test")

    steps_per_epoch = train_images.shape[0] // fc.TRAINING_BATCH_SIZE
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=fc.TRAINING_LEARNING_RATE,
        warmup_steps=steps_per_epoch,
        decay_steps=steps_per_epoch * fc.TRAINING_EPOCHS,
    )
    optimizer = optax.adam(schedule)
    params = fc.FashionMnistClassifier().init(jax.random.key(fc.TRAINING_SEED), train_images[:1])[
        "params"
    ]
    opt_state = optimizer.init(params)
    train_step = _make_train_step(optimizer)
    shuffle = np.random.default_rng(fc.TRAINING_SEED)

    start_time = time.perf_counter()
    for epoch in range(1, fc.TRAINING_EPOCHS + 1):
        order = shuffle.permutation(train_images.shape[0])
        losses = []
        for step in range(steps_per_epoch):
            batch = order[step * fc.TRAINING_BATCH_SIZE : (step + 1) * fc.TRAINING_BATCH_SIZE]
            params, opt_state, loss = train_step(
                params, opt_state, train_images[batch], train_labels[batch]
            )
            losses.append(loss)
        print(
            f"epoch {epoch}/{fc.TRAINING_EPOCHS}: mean training loss "
            f"{float(np.mean(jax.device_get(losses))):.4f}, "
            f"{time.perf_counter() - start_time:.0f} s",
            flush=True,
        )

    variables = {"params": params}
    test_accuracy = _accuracy(variables, test_images, test_labels)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fc.save_fmnist_classifier(variables, output)
    print(f"test accuracy: {test_accuracy:.4f} ({test_images.shape[0]} images)")
    print(f"wrote {output} ({os.path.getsize(output)} bytes)")
    print(f"SHA-256: {sha256_of_file(output)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--idx_dir",
        default=os.environ.get(IDX_DIR_ENV) or DEFAULT_IDX_DIR,
        help=f"folder with the four Fashion-MNIST IDX files (default ${IDX_DIR_ENV} or "
        f"{DEFAULT_IDX_DIR})",
    )
    parser.add_argument(
        "--output",
        default=fc.FMNIST_CLASSIFIER_FILE,
        help="the safetensors file to write (default: the one diffjax ships)",
    )
    args = parser.parse_args()
    train(args.idx_dir, args.output)


if __name__ == "__main__":
    main()
