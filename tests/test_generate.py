"""``python -m diffjax.generate``: a published pipeline or unconditional folder to a PNG grid
and an npz, equal to the library's call; bad flags in one line before anything loads."""

import os

import numpy as np
from train_helpers import PYTHON, run_cli

from diffjax.pipelines import sample_pretrained

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_text_to_image_writes_one_image_per_prompt_and_copy(tmp_path):
    prefix = str(tmp_path / "fox")
    command = [
        PYTHON, "-m", "diffjax.generate", f"--model={FIXTURES}/tiny_sd", "--prompt=a red fox",
        "--prompt=a blue bird", "--num=2", "--steps=2", "--height=16", "--width=24",
        f"--out={prefix}",
    ]  # fmt: skip
    result = run_cli(command, num_devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 images of 16x24" in result.stdout
    with np.load(prefix + ".npz") as saved:
        assert saved["samples"].shape == (4, 16, 24, 3)
        assert list(saved["prompts"]) == ["a red fox"] * 2 + ["a blue bird"] * 2
    assert os.path.getsize(prefix + ".png") > 100


def test_unconditional_folder_equals_the_library(tmp_path):
    prefix = str(tmp_path / "ddpm")
    command = [
        PYTHON, "-m", "diffjax.generate", f"--model={FIXTURES}/ddpm_unet", "--num=3",
        "--sampler=ddim", "--steps=3", "--option=eta=0.5", "--seed=2", f"--out={prefix}",
    ]  # fmt: skip
    result = run_cli(command, num_devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = sample_pretrained(
        f"{FIXTURES}/ddpm_unet", 3, steps=3, sampler="ddim", sampler_options={"eta": 0.5}, seed=2
    )
    # The CLI leaves out the CPU convolution flag this test session sets (conftest.py), so its
    # convolutions round differently: float32 rounding through 3 steps (measured 1.2e-5).
    with np.load(prefix + ".npz") as saved:
        np.testing.assert_allclose(saved["samples"], expected, atol=1e-4)


def test_bad_flags_fail_in_one_line(tmp_path):
    for flags, message in [
        ([f"--model={FIXTURES}/ddpm_unet", "--prompt=a fox"], "not a text-to-image pipeline"),
        ([f"--model={FIXTURES}/tiny_sd"], "give --prompt"),
        ([f"--model={tmp_path}/missing"], "is not a folder"),
        ([f"--model={FIXTURES}/tiny_sd", "--prompt=x", "--height=20"], "multiple of 8"),
    ]:
        result = run_cli([PYTHON, "-m", "diffjax.generate", *flags], num_devices=1)
        assert result.returncode == 1, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr
