"""The latent cache on disk (diffjax/data/latent_cache.py): sharded, atomic, resumed after a
kill at its first missing shard, refused for another autoencoder, read back as data."""

import numpy as np
import pytest

from diffjax.data.latent_cache import build_latent_cache, latent_cache_dataset, load_latent_cache
from diffjax.data.pipeline import DatasetInfo

MOMENTS = np.arange(10 * 2 * 2 * 3, dtype=np.float32).reshape(10, 2, 2, 3)
LABELS = np.arange(10, dtype=np.int32) % 3
MANIFEST = dict(num_examples=10, shard_size=4, autoencoder={"workdir": "/ae", "step": 5})


def _batches(stop_after=None):
    def batches(first_shard):
        for index in range(first_shard, 3):
            if stop_after is not None and index == stop_after:
                raise KeyboardInterrupt  # the kill
            rows = slice(4 * index, 4 * index + 4)
            yield MOMENTS[rows], {"label": LABELS[rows]}

    return batches


def test_a_killed_encoding_resumes_at_its_first_missing_shard(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(tmp_path, MANIFEST, _batches(stop_after=2), log=lambda _: None)
    with pytest.raises(ValueError, match="holds 2 of its 3 shards"):
        load_latent_cache(tmp_path)
    started = []

    def resumed(first_shard):
        started.append(first_shard)
        return _batches()(first_shard)

    build_latent_cache(tmp_path, MANIFEST, resumed, log=lambda _: None)
    assert started == [2]
    arrays, manifest = load_latent_cache(tmp_path)
    np.testing.assert_array_equal(arrays["moments"], MOMENTS)
    np.testing.assert_array_equal(arrays["cond"]["label"], LABELS)
    assert manifest == MANIFEST
    # Complete: nothing more is encoded.
    build_latent_cache(
        tmp_path, MANIFEST, lambda first: iter(started.append(first) or ()), log=print
    )
    assert started == [2]


def test_a_cache_of_another_autoencoder_is_refused_and_kept(tmp_path):
    build_latent_cache(tmp_path, MANIFEST, _batches(), log=lambda _: None)
    other = dict(MANIFEST, autoencoder={"workdir": "/ae", "step": 9})
    with pytest.raises(ValueError, match=r"differing: \['autoencoder'\]"):
        build_latent_cache(tmp_path, other, _batches(), log=lambda _: None)
    np.testing.assert_array_equal(load_latent_cache(tmp_path)[0]["moments"], MOMENTS)


def test_the_cache_reads_back_as_batches(tmp_path):
    build_latent_cache(tmp_path, MANIFEST, _batches(), log=lambda _: None)
    info = DatasetInfo("images", "train", 10, 3, None, (4, 4, 1), (("label", (), "int32"),))
    dataset = latent_cache_dataset(
        tmp_path, info, batch_size=5, seed=0, process_index=0, process_count=1
    )
    assert dataset.info.name == "latent_cache" and dataset.info.image_shape == (4, 4, 1)
    with iter(dataset) as iterator:
        batch = next(iterator)
    assert batch["moments"].shape == (5, 2, 2, 3) and batch["cond"]["label"].shape == (5,)
    # Each row keeps its label.
    rows = [int(np.where((MOMENTS == row).all(axis=(1, 2, 3)))[0][0]) for row in batch["moments"]]
    np.testing.assert_array_equal(batch["cond"]["label"], LABELS[rows])
