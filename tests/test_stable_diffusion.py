"""Text to image from a Stable Diffusion folder (diffjax/pipelines/stable_diffusion.py) against
diffusers' StableDiffusionPipeline driven by the same random weights: tokenizer, text encoder,
guided DDIM with SD's scheduler config, and the autoencoder, end to end (fixture written by
benchmarks/port_reference/make_stable_diffusion_fixture.py). No torch."""

import os

import jax
import numpy as np
import pytest

from diffjax.errors import ConfigError
from diffjax.pipelines import load_stable_diffusion, text_to_image

TINY_SD = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_sd")
PROMPTS = ["a photograph of an astronaut riding a horse", "Cats, dogs & 3 birds!"]
NEGATIVE = ["blurry", ""]
# float32 rounding through 4 guided steps (w = 7.5) and the decoder, in diffusers' [0, 1]
# image units (measured 2.4e-6).
PIPELINE_ATOL = 1e-4


@pytest.fixture(scope="module")
def pipeline():
    return load_stable_diffusion(TINY_SD)


@pytest.fixture(scope="module")
def reference():
    return np.load(os.path.join(TINY_SD, "outputs.npz"))


def test_prompt_contexts_match_diffusers(pipeline, reference):
    ids = pipeline.tokenizer(PROMPTS)
    context, _ = pipeline.text_encoder.apply({"params": pipeline.params["text_encoder"]}, ids)
    np.testing.assert_allclose(context, reference["prompt_embeddings"], atol=1e-4)


def test_the_whole_pipeline_matches_diffusers_split_over_devices(pipeline, reference):
    # Four copies of the two prompts: 8 examples, one per CPU device of the test session.
    copies = 4
    assert jax.device_count() == 2 * copies
    images = text_to_image(
        pipeline, PROMPTS * copies, NEGATIVE * copies, steps=4, guidance_scale=7.5,
        height=16, width=16, latents=np.concatenate([reference["latents"]] * copies),
    )  # fmt: skip
    assert images.shape == (8, 16, 16, 3)
    expected = np.concatenate([reference["images"]] * copies)
    np.testing.assert_allclose(images / 2 + 0.5, expected, atol=PIPELINE_ATOL)


@pytest.mark.parametrize(
    "arguments, named",
    [
        (dict(height=20), "height=20 must be a positive multiple of 8"),
        (dict(negative_prompt=["a", "b", "c"]), "3 negative prompts for 2 prompts"),
        (dict(latents=np.zeros((2, 4, 4, 4))), r"latents must have shape \(2, 8, 8, 4\)"),
        (dict(sampler_options=dict(eta=2.0)), "eta"),
        (dict(steps=0), "num_steps"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
    ],
)
def test_bad_arguments_are_refused_before_compiling(pipeline, arguments, named):
    arguments = dict(dict(height=16, width=16), **arguments)
    with pytest.raises(ConfigError, match=named):
        text_to_image(pipeline, PROMPTS, **arguments)


def test_a_folder_without_model_index_is_refused():
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_stable_diffusion(os.path.join(TINY_SD, "unet"))
