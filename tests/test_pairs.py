"""Reflow's pairs on disk and as a dataset (diffjax/data/pairs.py): a conditional teacher's
conditions travel with its pairs, and a reflow run of diffjax 0.2 resumes its pair position."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data.pairs import load_pairs, pair_dataset, read_manifest
from diffjax.pipelines import reflow


def _labelled_sample(noise, cond):
    """A stand-in teacher: its 'sample' is the noise shifted by its class."""
    return noise + cond["label"][:, None].astype(noise.dtype)


def test_the_condition_of_each_pair_is_stored_and_read_back(tmp_path):
    def conditions(indices):
        return {"label": jnp.asarray(indices % 3, jnp.int32)}

    manifest = reflow.generate_pairs(
        _labelled_sample, tmp_path, num_pairs=20, batch_size=8, seed=1, shape=(2,),
        settings=dict(teacher="stand-in"), cond_fn=conditions, progress=False,
    )  # fmt: skip
    assert read_manifest(tmp_path) == manifest
    pairs = load_pairs(tmp_path)
    np.testing.assert_array_equal(pairs["cond"]["label"], np.arange(20) % 3)
    np.testing.assert_allclose(
        pairs["image"] - pairs["noise"], np.repeat((np.arange(20) % 3)[:, None], 2, axis=1)
    )
    batch = next(iter(pair_dataset(tmp_path, batch_size=4, seed=0, process_index=0,
                                   process_count=1)))  # fmt: skip
    assert sorted(batch) == ["cond", "image", "noise"]
    difference = batch["image"] - batch["noise"]
    np.testing.assert_allclose(difference, np.repeat(batch["cond"]["label"][:, None], 2, axis=1))


def test_a_pair_position_saved_by_diffjax_0_2_resumes(tmp_path):
    reflow.generate_pairs(
        lambda noise: 2.0 * noise, tmp_path, num_pairs=24, batch_size=8, seed=0, shape=(2,),
        settings={}, progress=False,
    )  # fmt: skip
    dataset = pair_dataset(tmp_path, batch_size=4, seed=5, process_index=0, process_count=1)
    with iter(dataset) as iterator:
        batches = [next(iterator) for _ in range(3)]
    # 0.2's PairIterator saved only its position and what identifies the pairs.
    legacy = {
        "version": 1, "position": 2,
        "pipeline": dict(pairs=str(tmp_path), num_pairs=24, global_batch_size=4, seed=5),
    }  # fmt: skip
    with iter(dataset) as resumed:
        resumed.set_state(legacy)
        np.testing.assert_array_equal(next(resumed)["noise"], batches[2]["noise"])
    with iter(dataset) as other:
        with pytest.raises(ValueError, match="other arguments"):
            other.set_state(dict(legacy, pipeline=dict(legacy["pipeline"], seed=6)))
