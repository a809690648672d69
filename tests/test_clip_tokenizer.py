"""CLIP's tokenizer (diffjax/models/clip_tokenizer.py) against transformers' CLIPTokenizer on a
tiny BPE vocabulary in SD 1's and SD 2's folder formats; the fixture is written by
benchmarks/port_reference/make_clip_fixture.py (transformers 5's CLIPTokenizer and
CLIPTokenizerFast are one class; the script checks it against CLIP's BPE in plain Python)."""

import json
import os
import shutil

import numpy as np
import pytest

from diffjax.models import CLIPTokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "clip_text")
BOS, EOS, BANG = 812, 813, 0  # the tiny vocabulary's <|startoftext|>, <|endoftext|>, "!"

with open(os.path.join(FIXTURE, "tokenizer_prompts.json"), encoding="utf-8") as _file:
    PROMPTS = json.load(_file)


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(FIXTURE, "tokenizer_ids.npz"))


@pytest.fixture(scope="module")
def sd1():
    return CLIPTokenizer.from_folder(os.path.join(FIXTURE, "tokenizer"))


@pytest.mark.parametrize("folder", ["tokenizer", "tokenizer_sd2"])
def test_ids_equal_transformers_on_every_prompt(expected, folder):
    tokenizer = CLIPTokenizer.from_folder(os.path.join(FIXTURE, folder))
    ids = tokenizer(PROMPTS)
    assert ids.dtype == np.int32 and ids.shape == (len(PROMPTS), 77)
    for prompt, row, reference in zip(PROMPTS, ids, expected[folder]):
        np.testing.assert_array_equal(row, reference, err_msg=repr(prompt))


def test_special_tokens_and_padding(sd1):
    sd2 = CLIPTokenizer.from_folder(os.path.join(FIXTURE, "tokenizer_sd2"))
    assert (sd1.bos_token_id, sd1.eos_token_id, sd1.pad_token_id) == (BOS, EOS, EOS)
    # SD 2's special_tokens_map.json pads with "!", over its tokenizer_config.json.
    assert (sd2.bos_token_id, sd2.eos_token_id, sd2.pad_token_id) == (BOS, EOS, BANG)
    one = sd1("a")
    assert one.shape == (1, 77) and one[0, 0] == BOS and one[0, 2] == EOS
    assert (one[0, 3:] == EOS).all()
    assert (sd2("a")[0, 3:] == BANG).all()
    np.testing.assert_array_equal(sd1(""), [[BOS] + [EOS] * 76])


def test_truncation_keeps_bos_and_eos(sd1):
    prompt = " ".join(["a painting of a fox"] * 30)
    full = sd1(prompt, max_length=300)[0]
    length = int(np.argmax(full == EOS)) + 1
    assert length > 77
    for max_length in (77, 10, 2):
        cut = sd1([prompt, "a"], max_length=max_length)
        assert cut.shape == (2, max_length)
        np.testing.assert_array_equal(cut[0], [*full[: max_length - 1], EOS])
    with pytest.raises(ValueError, match="max_length=1"):
        sd1(prompt, max_length=1)
    with pytest.raises(TypeError, match="strings"):
        sd1(["a", 3])


def test_sd15_layout_eos_named_twice_with_different_flags(tmp_path, expected):
    """SD 1.5's files: EOS a normalised dict, PAD the same token as a plain string."""
    shutil.copytree(os.path.join(FIXTURE, "tokenizer_sd2"), tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "special_tokens_map.json") as file:
        special = json.load(file)
    with open(tmp_path / "special_tokens_map.json", "w") as file:
        json.dump(dict(special, pad_token="<|endoftext|>"), file)
    tokenizer = CLIPTokenizer.from_folder(tmp_path)
    np.testing.assert_array_equal(tokenizer(PROMPTS), expected["sd15_layout"])


def test_added_tokens_decoder_makes_transformers_ignore_special_tokens_map(tmp_path, expected):
    shutil.copytree(os.path.join(FIXTURE, "tokenizer_sd2"), tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "tokenizer_config.json") as file:
        config = json.load(file)
    flags = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    config["added_tokens_decoder"] = {
        str(BOS): dict(content="<|startoftext|>", **flags),
        str(EOS): dict(content="<|endoftext|>", **flags),
    }
    with open(tmp_path / "tokenizer_config.json", "w") as file:
        json.dump(config, file)
    # As the fixture script checks transformers does: SD 1's padding and ids.
    np.testing.assert_array_equal(
        CLIPTokenizer.from_folder(tmp_path)(PROMPTS), expected["tokenizer"]
    )
    config["added_tokens_decoder"]["814"] = dict(content="<cat-toy>", **flags)
    with open(tmp_path / "tokenizer_config.json", "w") as file:
        json.dump(config, file)
    with pytest.raises(ValueError, match="cat-toy"):
        CLIPTokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_missing_files_are_named(tmp_path, missing):
    shutil.copytree(os.path.join(FIXTURE, "tokenizer"), tmp_path, dirs_exist_ok=True)
    os.remove(tmp_path / missing)
    with pytest.raises(FileNotFoundError, match=missing):
        CLIPTokenizer.from_folder(tmp_path)


def test_defaults_without_config_files(tmp_path, expected):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(FIXTURE, "tokenizer", name), tmp_path)
    tokenizer = CLIPTokenizer.from_folder(tmp_path)
    assert tokenizer.model_max_length == 77
    np.testing.assert_array_equal(tokenizer(PROMPTS), expected["tokenizer"])
