"""The Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs",
arXiv:1606.03498, Sec. 4):

    IS = exp( E_x KL(p(y | x) || p(y)) ),

computed, as the paper's code and torch-fidelity do, on each of ``num_splits`` equal splits of
the (shuffled) samples with p(y) the split's mean prediction, and reported as the mean and
standard deviation over the splits. The class probabilities are the softmax of the Inception
network's logits without the bias (torch-fidelity's ``logits_unbiased``); the arithmetic is
float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.special

__all__ = ["inception_score"]


def inception_score(
    logits: Any, *, num_splits: int = 10, shuffle_seed: int | None = 2020
) -> tuple[float, float]:
    """Mean and standard deviation of exp(E KL(p(y|x) || p(y))) over ``num_splits`` splits
    (the Inception Score, Salimans et al. 2016, Sec. 4).

    Args:
      logits: float ``[N, C]`` classifier logits, N >= ``num_splits``.
      num_splits: number of splits (10 in the paper).
      shuffle_seed: permute the rows with this NumPy seed first (torch-fidelity's default
        2020), or None to split in the given order.

    Returns:
      ``(mean, std)``; 1 for predictions that ignore x, C for confident, balanced ones.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, C] with C >= 2 classes, got shape {logits.shape}.")
    count = logits.shape[0]
    if not 1 <= num_splits <= count:
        raise ValueError(f"num_splits must lie in [1, N = {count}], got {num_splits}.")
    if shuffle_seed is not None:
        logits = logits[np.random.RandomState(shuffle_seed).permutation(count)]
    log_p = scipy.special.log_softmax(logits, axis=1)
    scores = []
    for index in range(num_splits):
        part = log_p[index * count // num_splits : (index + 1) * count // num_splits]
        log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(part.shape[0])
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
