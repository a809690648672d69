"""Fréchet distance and streamed moments against closed forms and NumPy's two-pass covariance."""

import numpy as np
import pytest

from diffjax.metrics import frechet


def _random_covariance(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_streamed_moments_equal_numpy_covariance_even_with_large_means():
    rng = np.random.default_rng(0)
    # A mean of 1e4 on unit spread: raw sums of x x^T would lose ~8 digits to cancellation.
    features = 1e4 + rng.standard_normal((1000, 6)) @ rng.standard_normal((6, 6))
    moments = frechet.empty_moments(6)
    for start in range(0, 1000, 96):
        moments = frechet.accumulate_moments(
            moments, features[start : start + 96].astype(np.float32)
        )
    stats = frechet.statistics_from_moments(moments)
    reference = features.astype(np.float32).astype(np.float64)
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mu, reference.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.sigma, np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)


def test_distance_of_diagonal_gaussians_has_its_closed_form():
    rng = np.random.default_rng(1)
    mu_1, mu_2 = rng.standard_normal(5), rng.standard_normal(5)
    var_1, var_2 = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum(var_1 + var_2 - 2 * np.sqrt(var_1 * var_2))
    value = frechet.frechet_distance(
        frechet.FeatureStatistics(mu_1, np.diag(var_1), 0),
        frechet.FeatureStatistics(mu_2, np.diag(var_2), 0),
    )
    assert value == pytest.approx(expected, rel=1e-10)


def test_distance_with_non_commuting_covariances_matches_an_eigen_reference():
    # tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(S1^(1/2) S2 S1^(1/2))), a route without sqrtm(S1 S2).
    rng = np.random.default_rng(2)
    sigma_1, sigma_2 = _random_covariance(rng, 8), _random_covariance(rng, 8)
    mu_1, mu_2 = rng.standard_normal(8), rng.standard_normal(8)
    values, vectors = np.linalg.eigh(sigma_1)
    root_1 = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    trace_root = np.sum(np.sqrt(np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1)))
    expected = np.sum((mu_1 - mu_2) ** 2) + np.trace(sigma_1 + sigma_2) - 2 * trace_root
    value = frechet.frechet_distance(
        frechet.FeatureStatistics(mu_1, sigma_1, 0), frechet.FeatureStatistics(mu_2, sigma_2, 0)
    )
    assert value == pytest.approx(expected, rel=1e-9)


def test_a_set_against_itself_is_zero_and_a_mean_shift_adds_its_square():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((500, 16))
    stats = frechet.statistics_from_features(features)
    scale = np.trace(stats.sigma)
    assert abs(frechet.frechet_distance(stats, stats)) < 1e-9 * scale
    for shift in (0.1, 1.0, 3.0):
        shifted = frechet.statistics_from_features(features + shift)
        # Same covariance, mean moved by `shift` in each of 16 axes: d^2 = 16 shift^2.
        assert frechet.frechet_distance(stats, shifted) == pytest.approx(16 * shift**2, rel=1e-7)


def test_statistics_file_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    stats = frechet.statistics_from_features(rng.standard_normal((50, 4)))
    path = frechet.save_statistics(tmp_path / "ref.npz", stats, network="test", split="train")
    loaded, metadata = frechet.load_statistics(path, expected_dim=4)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 50 and metadata == {"network": "test", "split": "train"}
    # A pytorch-fid style file (mu and sigma only) loads with empty metadata.
    np.savez(tmp_path / "published.npz", mu=stats.mu, sigma=stats.sigma)
    assert frechet.load_statistics(tmp_path / "published.npz")[1] == {}
    with pytest.raises(ValueError, match="4-d statistics, but the feature network gives 2048-d"):
        frechet.load_statistics(path, expected_dim=2048)
    with pytest.raises(FileNotFoundError, match="make_reference_stats"):
        frechet.load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=stats.mu)
    with pytest.raises(ValueError, match="needs arrays 'mu' and 'sigma'"):
        frechet.load_statistics(tmp_path / "bad.npz")


def test_bad_inputs_name_the_problem():
    moments = frechet.empty_moments(3)
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        frechet.accumulate_moments(moments, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        frechet.accumulate_moments(moments, np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        frechet.statistics_from_moments(frechet.accumulate_moments(moments, np.zeros((1, 3))))
    a = frechet.FeatureStatistics(np.zeros(3), np.eye(3), 0)
    b = frechet.FeatureStatistics(np.zeros(4), np.eye(4), 0)
    with pytest.raises(ValueError, match="feature dimensions 3 and 4"):
        frechet.frechet_distance(a, b)
