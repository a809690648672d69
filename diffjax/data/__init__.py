"""Data: the host-invariant, resumable grain pipeline (:mod:`~diffjax.data.pipeline`), datasets
by name (:mod:`~diffjax.data.datasets`), reflow's (noise, sample) pairs
(:mod:`~diffjax.data.pairs`) and a latent run's latent cache (:mod:`~diffjax.data.latent_cache`).
Each module imports what it needs itself; this package imports nothing."""
