"""Programs and pipelines built on the library: published Stable Diffusion and DDPM folders to
images (:func:`text_to_image`, :func:`sample_pretrained`), and the distillation and reflow
programs (:mod:`diffjax.pipelines.distillation`, :mod:`diffjax.pipelines.reflow`)."""

from diffjax.pipelines.stable_diffusion import StableDiffusion, load_stable_diffusion, text_to_image
from diffjax.pipelines.unconditional import sample_pretrained

__all__ = ["StableDiffusion", "load_stable_diffusion", "sample_pretrained", "text_to_image"]
