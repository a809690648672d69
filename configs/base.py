r"""The base config: every key of a diffjax training run, set to the DDPM paper's choices.

It is the base that the other configs edit, not a run of its own: the default run is
configs/fashion_mnist.py (offline, on a CPU), and this file's values are the DDPM paper's
CIFAR-10 run, configs/cifar10.py.

Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239), Sec. 4 and
Appendix B: a 35.7M-parameter UNet, linear betas 1e-4..0.02 over T = 1000, eps prediction, Adam
at 2e-4 with 5000 warm-up steps, batch 128, dropout 0.1, EMA 0.9999, gradient clipping at 1,
random horizontal flips. The other configs start from this file and change what differs; the
shapes here fit 32x32 RGB data (CIFAR-10: see configs/cifar10.py for the full run).

Every key is validated before anything compiles (diffjax/training/config_validation.py); any of
them can be overridden from the command line, e.g.

  python -m diffjax.train --config configs/base.py --workdir runs/x \
      --config.data.name=cifar10 --config.training.num_steps=1000

Expected: exactly configs/cifar10.py, whose docstring states the run (this file is its base;
on CIFAR-10 it is the DDPM paper's 800k-step run, meant for a GPU or TPU).

Sections: data, model, diffusion, optim, training, sampling, eval, and the run's seed.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Returns the base config (DDPM on 32x32 RGB images)."""
    config = ml_collections.ConfigDict()
    # Fixes the initialisation, the data order and every training noise draw.
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # 'fashion_mnist' (offline), 'folder' (data_dir of PNG/JPEG, class subfolders = labels),
    # or any TFDS image dataset ('cifar10', 'celeb_a', ...; preparing those needs TensorFlow).
    config.data.name = "cifar10"
    config.data.split = "train"
    # Images are center-cropped and resized to image_size x image_size.
    config.data.image_size = 32
    # The GLOBAL batch: summed over all devices and hosts; must split evenly over devices.
    config.data.batch_size = 128
    config.data.random_flip = True
    # TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets); for 'folder' the
    # image folder.
    config.data.data_dir = config_dict.placeholder(str)
    # Folder of manually downloaded source files (Fashion-MNIST's IDX files, ...).
    config.data.manual_dir = config_dict.placeholder(str)
    # False: never touch the network (fail fast if the data is not here).
    config.data.download = True
    # Host threads preparing batches ahead, and how many batches they may prepare.
    config.data.num_threads = 4
    config.data.prefetch_batches = 4

    # The network, by name in diffjax.models.MODELS; the other keys are that network's (these
    # are the UNet's: DDPM's CIFAR-10 values, 35.7M parameters).
    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"
    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    # Feature-map sizes (pixels) that get self-attention; each must occur in the UNet.
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    # None: unconditional. K: class-conditional on K classes (label K is the null label).
    config.model.num_classes = config_dict.placeholder(int)
    config.model.num_groups = 32
    # Compute and parameter dtypes: 'float32', 'bfloat16' (TPU/GPU) or 'float16'.
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"
    # Recompute activations in the backward pass: less memory, ~30% more compute.
    config.model.remat = False

    config.diffusion = ml_collections.ConfigDict()
    # The noise process x_t = alpha(t) x_0 + sigma(t) eps: 'discrete' (the schedule below, int t
    # in [0, T)) or a continuous one (float t in [0, 1]): 'vp_linear', 'vp_cosine', 've',
    # 'edm', 'rectified_flow' (diffjax.processes).
    config.diffusion.process = "discrete"
    # A continuous process's parameters, e.g. {'sigma_max': 80.0} for 'edm'; empty: defaults.
    config.diffusion.process_options = ml_collections.ConfigDict()
    # The discrete process: 'linear' (DDPM), 'cosine' (Nichol & Dhariwal 2021), 'scaled_linear',
    # 'sigmoid'.
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    # Rescale the schedule to zero terminal SNR (Lin et al. 2024); pair with 'v' prediction.
    config.diffusion.zero_terminal_snr = False
    # What the network predicts: 'eps', 'x0', 'v', 'flow' (the velocity; continuous processes)
    # or 'edm' (EDM's preconditioned F).
    config.diffusion.prediction_type = "eps"
    # 'uniform' (the plain regression, DDPM's simple loss), 'min_snr' (Hang et al. 2023, gamma
    # below), 'edm' (Karras et al. 2022) or 'rectified_flow' (SD3's w^RF).
    config.diffusion.loss_weighting = "uniform"
    config.diffusion.min_snr_gamma = 5.0
    # Per-channel offset noise scale (Guttenberg 2023); 0 disables it.
    config.diffusion.offset_noise = 0.0
    # Training times of a continuous process: 'uniform' (on [1e-5, 1]), 'logit_normal' and
    # 'mode' (SD3), 'edm_lognormal' (EDM's noise levels), 'constant' (one-step distillation,
    # python -m diffjax.reflow --distill); a discrete schedule uses 'uniform'.
    config.diffusion.time_sampler = "uniform"
    # Its options, e.g. {'mean': 0.0, 'std': 1.0, 'shift': 3.0} for 'logit_normal'.
    config.diffusion.time_sampler_options = ml_collections.ConfigDict()

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    # 'constant' after warm-up (DDPM) or 'cosine' decay to 0 at training.num_steps.
    config.optim.lr_decay = "constant"
    # Clip the global gradient norm (None: no clipping).
    config.optim.grad_clip_norm = 1.0
    # Decoupled weight decay on kernels (AdamW); 0 is Adam.
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    # EMA of the weights used for sampling (with a warm-up: min(decay, (1+n)/(10+n))).
    config.optim.ema_decay = 0.9999

    config.training = ml_collections.ConfigDict()
    config.training.num_steps = 800_000
    # Metrics are fetched from the devices (one host sync) only every log_every_steps.
    config.training.log_every_steps = 100
    config.training.checkpoint_every_steps = 5000
    # Newest checkpoints kept; >= 2 leaves a fallback when the newest one is damaged.
    config.training.keep_checkpoints = 3
    config.training.async_checkpointing = True
    # On a NaN/Inf loss or gradient: 'stop' (clear error naming the step; the last good
    # checkpoint is kept) or 'skip' (leave the weights unchanged for that step and go on).
    config.training.nan_policy = "stop"
    # Probability of replacing a class label by the null label (classifier-free guidance).
    config.training.label_dropout = 0.0
    config.training.progress_bar = True
    # Reflow (python -m diffjax.reflow sets both): the workdir whose EMA weights a fresh run
    # starts from, and a folder of (noise, sample) pairs to train on instead of the dataset.
    config.training.init_from = ""
    config.training.pairs_dir = ""

    # EMA sample grids written to workdir/samples/ during training (same seed every time).
    config.sampling = ml_collections.ConfigDict()
    # Every this many steps, and always at the end; 0: only at the end.
    config.sampling.every_steps = 20_000
    # Images per grid; 0 disables the grids.
    config.sampling.num_samples = 64
    # Any of diffjax.samplers.SAMPLER_NAMES: 'ddpm', 'ddim', 'dpm_solver', 'euler', 'heun',
    # 'flow_euler', 'flow_midpoint', 'flow_heun'.
    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 100
    # That sampler's own options, checked against it before training starts, e.g.
    # {'eta': 1.0} for DDIM or {'s_churn': 10.0} for 'heun'; empty: its defaults.
    config.sampling.options = ml_collections.ConfigDict()
    # Classifier-free guidance weight; 1.0 means no guidance.
    config.sampling.guidance_scale = 1.0
    config.sampling.clip_x0 = True
    config.sampling.seed = 0

    # Held-out denoising loss of the EMA weights on fixed batches, noise and timesteps.
    config.eval = ml_collections.ConfigDict()
    # Every this many steps, and at the end; 0: never.
    config.eval.every_steps = 20_000
    config.eval.split = "test"
    # Global batch size and number of batches of each evaluation.
    config.eval.batch_size = 256
    config.eval.num_batches = 4
    # A Fréchet distance of the EMA samples (drawn as the sample grids are) every this many
    # steps and at the end, logged as 'fid' or 'fd_fmnist'; 0: never.
    config.eval.fd_every_steps = 0
    config.eval.fd_num_samples = 1000
    # Samples per compiled call; a multiple of the device count.
    config.eval.fd_batch_size = 200
    # 'fmnist' (the shipped Fashion-MNIST classifier, 28x28x1 only, offline) or 'inception'
    # (FID; needs the published weights).
    config.eval.fd_features = "fmnist"
    # Reference statistics (.npz with mu, sigma); None: built once from eval.split into
    # workdir/eval/.
    config.eval.fd_reference = config_dict.placeholder(str)
    return config
