"""A latent run's training data from its latent cache (``config.training.latent_cache``).

:func:`latent_training_data` encodes the run's training split with the run's codec and frozen
autoencoder parameters into the cache folder (resuming a killed encoding at its first missing
shard; :mod:`diffjax.data.latent_cache`), then returns the cache as the run's training data. It
runs when the run starts, after the config, data and networks are found good.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import numpy as np

from diffjax.data.latent_cache import build_latent_cache, latent_cache_dataset
from diffjax.errors import ConfigError
from diffjax.training.console import log

__all__ = ["SHARD_SIZE", "latent_training_data"]

SHARD_SIZE = 1000
"""Images per shard of a latent cache."""


def latent_training_data(
    values: Mapping[str, Any], mesh: Any, info: Any, codec: Any, frozen: Mapping[str, Any],
    frozen_record: Mapping[str, Any],
) -> Any:  # fmt: skip
    """The run's training data read from its latent cache, encoded first where needed.

    Args:
      values: the validated config (``training.latent_cache`` set).
      mesh: the run's mesh.
      info: the training images' description.
      codec: the run's autoencoder codec.
      frozen: the run's frozen pytrees (``frozen['codec']``: the autoencoder's parameters).
      frozen_record: where they came from (the cache's manifest names it).

    Raises:
      ConfigError: a cache folder of another autoencoder or dataset, or several processes
        (the cache is encoded by one).
    """
    from diffjax.data.pipeline import dataset_from_config

    cache_dir = values["training"]["latent_cache"]
    source = {key: value for key, value in frozen_record["codec"].items() if "factor" not in key}
    manifest = dict(
        num_examples=int(info.num_examples), shard_size=SHARD_SIZE, autoencoder=source,
        dataset=dict(name=info.name, split=info.split, image_size=values["data"]["image_size"]),
    )  # fmt: skip
    params = frozen["codec"]
    moments = jax.jit(codec.moments)

    def batches(first_shard: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        if jax.process_count() > 1:
            raise ConfigError(
                f"config.training.latent_cache={cache_dir!r} is encoded by one process: run it "
                f"once on one host, then train on the complete cache on many."
            )
        dataset = dataset_from_config(
            values, mesh, values["data"]["split"], SHARD_SIZE, shuffle=False, num_epochs=1,
            drop_remainder=False, random_flip=False,
        )  # fmt: skip
        with iter(dataset) as iterator:
            for index, batch in enumerate(iterator):
                if index >= first_shard:
                    yield (
                        np.asarray(moments(params, np.asarray(batch["image"]))),
                        {key: np.asarray(value) for key, value in batch.get("cond", {}).items()},
                    )

    try:
        build_latent_cache(cache_dir, manifest, batches, log=log)
    except ValueError as error:
        raise ConfigError(f"config.training.latent_cache: {error}") from error
    return latent_cache_dataset(
        cache_dir, info, batch_size=values["data"]["batch_size"] // jax.process_count(),
        seed=values["seed"], process_index=jax.process_index(),
        process_count=jax.process_count(),
    )  # fmt: skip
