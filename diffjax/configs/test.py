r"""A tiny config for tests and smoke runs: seconds on a CPU.

  python -m diffjax.train --config configs/test.py --workdir /tmp/diffjax-test

Expected: 13 s on a shared 2-core VM with a warm compilation cache (measured); the first run
compiles for up to a minute, and prepares Fashion-MNIST (~10 s) if no run has yet. The workdir
then holds checkpoints at steps 4 and 6, metrics.jsonl (loss ~0.96 at step 6), TensorBoard
events, samples/step_0000006.png (8 noise-like 8x8 samples in a 3x3 grid: the model is far too
small and short-trained to draw anything) and loss.png. It exercises every part of the program:
data, UNet, sharded step, EMA, checkpoints, sample grids. The tests run it on a generated image
folder (--config.data.name=folder --config.data.data_dir=...), which needs no dataset.
"""

from diffjax.configs import base


def get_config():
    """Returns the tiny test config (Fashion-MNIST downscaled to 8x8, a 2-level 8-channel UNet)."""
    config = base.get_config()
    config.data.name = "fashion_mnist"
    config.data.image_size = 8
    config.data.batch_size = 8
    config.data.random_flip = False
    config.data.num_threads = 1
    config.data.prefetch_batches = 2

    config.model.base_channels = 8
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.dropout = 0.0
    config.model.num_groups = 4

    config.diffusion.schedule = "cosine"

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 2
    config.optim.ema_decay = 0.9

    config.training.num_steps = 6
    config.training.log_every_steps = 2
    config.training.checkpoint_every_steps = 2
    config.training.keep_checkpoints = 2
    config.training.progress_bar = False

    config.sampling.every_steps = 0
    config.sampling.num_samples = 8
    config.sampling.num_steps = 4

    config.eval.every_steps = 0
    config.eval.batch_size = 8
    config.eval.num_batches = 1
    return config
