"""Writes tests/fixtures/clip_text/: a tiny CLIP BPE tokenizer in the diffusers ``tokenizer/``
folder format with the ids transformers gives for 50 prompts, two tiny random-weight
transformers ``CLIPTextModel`` s (quick_gelu as SD 1's, gelu as SD 2's) with their outputs, one
of them as original single-file SD 1 and SD 2 checkpoints, and the full-size key tables of SD
1.5's and SD 2.1's text encoders.

Run in the PyTorch peer venv (benchmarks/setup_peers.sh):

    /work/peers/bin/python benchmarks/port_reference/make_clip_fixture.py

tests/test_clip.py and tests/test_clip_tokenizer.py read only what is written here (no torch).

- ``tokenizer/`` (SD 1 style: pad ``<|endoftext|>``; ``tokenizer_config.json`` as transformers
  5 writes it) and ``tokenizer_sd2/`` (SD 2 style: the legacy ``tokenizer_config.json`` without
  ``added_tokens_decoder`` says pad ``<|endoftext|>``, its ``special_tokens_map.json`` says
  ``!``, which wins): ``vocab.json`` and ``merges.txt`` in CLIP's layout (the 256 byte symbols,
  their ``</w>`` forms, 300 merges learnt here on a short English text, then
  ``<|startoftext|>`` and ``<|endoftext|>``). ``tokenizer_prompts.json`` holds the prompts and
  ``tokenizer_ids.npz`` transformers' ids of them (``padding="max_length", max_length=77,
  truncation=True``, as SD pipelines call it) for each folder, and as ``sd15_layout`` for
  ``tokenizer_sd2/`` with ``special_tokens_map.json``'s ``pad_token`` set to
  ``<|endoftext|>``: SD 1.5's published files (EOS a normalised dict, PAD the same token as a
  plain string). transformers 5 has one CLIP tokenizer (``CLIPTokenizerFast is
  CLIPTokenizer``, backed by ``tokenizers``), so the script also checks every plain prompt
  against CLIP's BPE written out in Python here (the algorithm of OpenAI CLIP's
  ``simple_tokenizer`` on the same NFC / whitespace / lowercase normalisation).
- ``text_encoder/`` (quick_gelu, 2 layers, 2 heads, config ``eos_token_id=2`` as SD 1's) and
  ``text_encoder_gelu/`` (gelu, 3 layers, 4 heads, ``eos_token_id`` the real EOS):
  ``save_pretrained`` folders (hidden 8, MLP 12, 77 positions, the tiny vocabulary; every
  parameter drawn at random, LayerNorm weights around 1). transformers >= 5.6 writes the keys
  without the ``text_model.`` prefix of published files; the script checks that transformers
  loads the prefixed layout to the same outputs. ``outputs.npz``, per model: ``ids`` (the
  tokenizer's ids of two prompts; SD 2's padding for the gelu model) and ``random_ids``
  (``[2, 9]``, no EOS), each with ``last_hidden_state``, ``skip1``
  (``final_layer_norm(hidden_states[-2])``, diffusers' ``clip_skip=1``) and ``pooler_output``.
- ``sd1_single_file.safetensors`` (``cond_stage_model.transformer.text_model.*`` with the
  ``position_ids`` buffer) and ``sd2_single_file.safetensors`` (OpenCLIP names, one more layer,
  ``text_projection`` and ``logit_scale``, as SD 2's 24-layer OpenCLIP ViT-H of which diffusers
  keeps 23), both of the gelu model and both with two UNet / autoencoder keys; each is checked
  to convert back to the model's state dict through diffusers' own
  ``convert_ldm_clip_checkpoint`` / ``convert_open_clip_checkpoint``.
- ``sd15_text_encoder_shapes.json`` / ``sd21_text_encoder_shapes.json``: the transformers
  config and ``{key: shape}`` of the published text encoders (built on the meta device by
  ``accelerate.init_empty_weights``), keys in the published ``text_model.`` layout.
- ``versions.json``: the library versions used.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import unicodedata

import accelerate
import diffusers
import numpy as np
import regex
import safetensors
import tokenizers
import torch
import transformers
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_text")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 300
MAX_LENGTH = 77
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CORPUS = """
A photograph of an astronaut riding a horse on the moon, highly detailed, digital art.
A painting of a fox sitting in a field at sunrise, trending on artstation, oil on canvas.
Portrait of an old man with a beard, studio lighting, sharp focus, photorealistic, 8k.
The quick brown fox jumps over the lazy dog. A cat sleeps on the warm window sill.
Beautiful landscape with mountains, rivers and forests, golden hour, cinematic lighting.
An illustration of a castle in the clouds, fantasy, concept art, matte painting, vibrant.
A watercolor painting of flowers in a vase, soft colors, delicate brush strokes.
A futuristic city at night with neon lights, rain, reflections, cyberpunk style.
Close up photo of a red rose with water drops, macro photography, shallow depth of field.
A bowl of fruit on a wooden table, still life, realistic, natural light from the window.
"""

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A Horse",
    "",
    "a",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\ttabs\nand\r\nnewlines",
    "don't stop, it's what we've been doing; they'll say I'm fine and you'd agree",
    "DON'T IT'S WE'RE I'LL",
    "hello!!! what?? yes... (parentheses) [brackets] {braces}",
    "hello!",
    "!",
    "!!!!",
    "numbers 12345 and 3.14159 and 1,000,000",
    "café naïve résumé",
    "cafe\u0301 with a combining accent",
    "über straße",
    "İstanbul and ΑΒΓ δέλτα",
    "日本語のテキスト",
    "Привет мир",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "emoji 🐱🚀 test 👍🏽",
    "masterpiece, best quality, (detailed:1.2), 8k, trending on artstation",
    "a cat's whiskers and the dog’s bone",
    "snake_case and kebab-case and CamelCase",
    "e-mail: someone@example.com https://example.com/path?x=1&y=2",
    "non\u00a0breaking space and zero\u200bwidth space",
    "ﬁ ligature, Ⅻ roman numeral, x²³ superscripts, ½ fraction",
    "#hashtag @mention $100 50% a&b a+b=c ~tilde `backtick` ^caret |pipe|",
    "quote 'single' and \"double\" and trailing dogs'",
    "'s at the start",
    "<|endoftext|> literal special token",
    "before <|startoftext|> middle <|endoftext|> after",
    "<|ENDOFTEXT|> and <|StartOfText|> upper case specials",
    "x" * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "the the the the the",
    "mountains rivers forests castle clouds",
    "tab\tseparated\tvalues",
    "a\u3000wide space",
    "under_score__double",
    "ellipsis… and em—dash and “curly quotes”",
    "mixed123numbers456and789letters",
    "-5 degrees, +3.5%, 1e-4",
    "bell\u0007control character",
    " ".join(["a painting of a fox sitting in a field at sunrise"] * 10),
    "very long " + "highly detailed, " * 40 + "the end",
    "lower UPPER MiXeD cAsE",
    "x" * 20 + " " + "y" * 20,
    "glass of water!",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's / CLIP's reversible byte -> printable-character map, in CLIP's vocabulary order
    (the printable bytes first, then the others mapped to 256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_SYMBOLS = bytes_to_unicode()


def normalise(text: str) -> str:
    """CLIPConverter's normaliser: NFC, whitespace runs -> one space, lowercase."""
    return regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


def words_of(text: str) -> list[str]:
    """The byte-level symbols of each CLIP pre-token of the normalised text."""
    return [
        "".join(BYTE_SYMBOLS[b] for b in piece.encode("utf-8"))
        for piece in regex.findall(CLIP_SPLIT, normalise(text))
    ]


def learn_merges(text: str, count: int) -> list[tuple[str, str]]:
    """Greedy BPE training (Sennrich et al. 2016) with CLIP's ``</w>`` end-of-word symbol:
    ``count`` times, merge the most frequent adjacent pair (ties: the smallest pair)."""
    words = collections.Counter(
        tuple([*word[:-1], word[-1] + "</w>"]) for word in words_of(text) if word
    )
    merges = []
    for _ in range(count):
        pairs: collections.Counter = collections.Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: collections.Counter = collections.Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def reference_bpe_ids(
    text: str, vocab: dict[str, int], ranks: dict[tuple[str, str], int]
) -> list[int]:
    """CLIP's BPE (``simple_tokenizer``): per pre-token, repeatedly merge the lowest-ranked
    adjacent pair; the last symbol carries ``</w>``. BOS and EOS around it."""
    ids = [vocab[BOS]]
    for word in words_of(text):
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [
                (ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))
            ]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            pair = (symbols[i], symbols[i + 1])
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == pair:
                    out.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            symbols = out
        ids.extend(vocab[symbol] for symbol in symbols)
    return [*ids, vocab[EOS]]


def legacy_token(content: str) -> dict:
    """A special token as the 2022 SD folders store it (``AddedToken`` fields)."""
    return dict(content=content, lstrip=False, normalized=True, rstrip=False, single_word=False)


def write_tokenizers() -> tuple[dict, dict]:
    """Writes the two tokenizer folders and ``tokenizer_ids.json``; returns
    ``({folder: expected ids}, vocab)``."""
    merges = learn_merges(CORPUS, NUM_MERGES)
    assert len(merges) == NUM_MERGES, len(merges)
    symbols = list(BYTE_SYMBOLS.values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    ranks = {merge: rank for rank, merge in enumerate(merges)}
    expected = {}
    for folder in ("tokenizer", "tokenizer_sd2"):
        path = os.path.join(OUT, folder)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as file:
            json.dump(vocab, file, ensure_ascii=False)
        with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as file:
            file.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        if folder == "tokenizer":
            # transformers 5's own files: tokenizer_config.json with added_tokens_decoder.
            saved = CLIPTokenizer.from_pretrained(path, model_max_length=MAX_LENGTH)
            with tempfile.TemporaryDirectory() as scratch:
                saved.save_pretrained(scratch)
                shutil.copy(os.path.join(scratch, "tokenizer_config.json"), path)
        else:
            # SD 2's 2022 files: the config says one pad token, special_tokens_map.json another.
            special = dict(
                bos_token=legacy_token(BOS),
                eos_token=legacy_token(EOS),
                unk_token=legacy_token(EOS),
            )
            config = dict(
                add_prefix_space=False, do_lower_case=True, errors="replace", model_max_length=MAX_LENGTH,
                pad_token=EOS, tokenizer_class="CLIPTokenizer",
                **{key: {"__type": "AddedToken", **value} for key, value in special.items()},
            )  # fmt: skip
            with open(os.path.join(path, "tokenizer_config.json"), "w") as file:
                json.dump(config, file, indent=2)
            with open(os.path.join(path, "special_tokens_map.json"), "w") as file:
                json.dump(dict(special, pad_token="!"), file, indent=2)
        slow = CLIPTokenizer.from_pretrained(path)
        fast = CLIPTokenizerFast.from_pretrained(path)
        assert slow.model_max_length == MAX_LENGTH, slow.model_max_length
        ids = {}
        for name, tokenizer in (("slow", slow), ("fast", fast)):
            ids[name] = tokenizer(
                PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True
            )["input_ids"]
        assert ids["slow"] == ids["fast"], folder
        pad = vocab["!" if folder == "tokenizer_sd2" else EOS]
        for prompt, row in zip(PROMPTS, ids["fast"]):
            unpadded = fast(prompt)["input_ids"]
            reference = reference_bpe_ids(prompt, vocab, ranks)
            # The reference knows no added tokens: SD 2's pad token "!" and literal special
            # tokens are matched before the BPE (as added tokens, with their own ids).
            plain = folder == "tokenizer" and "<|" not in prompt
            if plain and unpadded != reference:
                raise AssertionError(f"{folder} {prompt!r}: {unpadded} != {reference}")
            truncated = (
                unpadded[: MAX_LENGTH - 1] + [vocab[EOS]]
                if len(unpadded) > MAX_LENGTH
                else unpadded
            )
            assert row == truncated + [pad] * (MAX_LENGTH - len(truncated)), (folder, prompt)
        expected[folder] = ids["fast"]
    # SD 1.5's published folder: tokenizer_sd2's files with special_tokens_map.json padding with
    # <|endoftext|>, a string (not normalised) where eos_token is a normalised dict.
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree(os.path.join(OUT, "tokenizer_sd2"), scratch, dirs_exist_ok=True)
        with open(os.path.join(scratch, "special_tokens_map.json")) as file:
            special = json.load(file)
        with open(os.path.join(scratch, "special_tokens_map.json"), "w") as file:
            json.dump(dict(special, pad_token=EOS), file)
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
        ids = tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True)
        expected["sd15_layout"] = ids["input_ids"]
    # With added_tokens_decoder in tokenizer_config.json (transformers >= 4.34 writes it),
    # transformers ignores special_tokens_map.json: SD 2's folder then pads like SD 1's.
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree(os.path.join(OUT, "tokenizer_sd2"), scratch, dirs_exist_ok=True)
        with open(os.path.join(scratch, "tokenizer_config.json")) as file:
            config = json.load(file)
        config["added_tokens_decoder"] = {
            str(vocab[token]): dict(content=token, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
            for token in (BOS, EOS)
        }  # fmt: skip
        with open(os.path.join(scratch, "tokenizer_config.json"), "w") as file:
            json.dump(config, file)
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
        ids = tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True)
        assert ids["input_ids"] == expected["tokenizer"]
    return expected, vocab


MODELS = {
    # SD 1's text encoder config keeps the pre-2023 eos_token_id=2 (pooled = argmax of the ids);
    # the gelu model has the real EOS id (pooled = first EOS).
    "text_encoder": dict(
        hidden_act="quick_gelu", num_hidden_layers=2, num_attention_heads=2, eos_token_id=2
    ),
    "text_encoder_gelu": dict(
        hidden_act="gelu", num_hidden_layers=3, num_attention_heads=4, eos_token_id=None
    ),
}
OUTPUT_PROMPTS = [0, 45]  # indices into PROMPTS: a plain prompt, a truncated one
OTHER_COMPONENTS = {
    "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(3),
    "first_stage_model.encoder.conv_in.bias": torch.zeros(3),
}


def tiny_model(vocab: dict, **overrides) -> CLIPTextModel:
    """A tiny ``CLIPTextModel`` with every parameter drawn at random."""
    arguments = dict(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=12, max_position_embeddings=MAX_LENGTH,
        layer_norm_eps=1e-5, bos_token_id=vocab[BOS], pad_token_id=vocab[EOS],
    )  # fmt: skip
    arguments.update(overrides)
    if arguments["eos_token_id"] is None:
        arguments["eos_token_id"] = vocab[EOS]
    model = CLIPTextModel(CLIPTextConfig(**arguments)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.2 if parameter.ndim == 1 else 1.0 / np.sqrt(parameter.shape[-1])
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(torch.randn_like(parameter) * scale + offset)
    return model


def published_state(model: CLIPTextModel) -> dict[str, torch.Tensor]:
    """The state dict in the published layout (``text_model.`` prefix; transformers >= 5.6
    flattened ``CLIPTextModel`` and saves without it)."""
    return {
        key if key.startswith("text_model.") else f"text_model.{key}": value.contiguous()
        for key, value in model.state_dict().items()
    }


def run_model(model: CLIPTextModel, ids: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(ids).long(), output_hidden_states=True)
        hidden = out.hidden_states
        assert len(hidden) == model.config.num_hidden_layers + 1
        torch.testing.assert_close(
            model.final_layer_norm(hidden[-1]), out.last_hidden_state, rtol=0, atol=0
        )
        # diffusers' clip_skip=1: final_layer_norm(hidden_states[-(clip_skip + 1)]).
        skip1 = model.final_layer_norm(hidden[-2])
    return dict(
        ids=ids, last_hidden_state=out.last_hidden_state.numpy(), skip1=skip1.numpy(),
        pooler_output=out.pooler_output.numpy(),
    )  # fmt: skip


def check_published_layout(model: CLIPTextModel, ids: np.ndarray, expected: np.ndarray) -> None:
    """transformers loads the published ``text_model.`` layout (with SD 1.5's ``position_ids``
    buffer) to the same outputs as its own save."""
    state = published_state(model)
    state["text_model.embeddings.position_ids"] = torch.arange(MAX_LENGTH)[None]
    with tempfile.TemporaryDirectory() as scratch:
        model.config.save_pretrained(scratch)
        save_file(state, os.path.join(scratch, "model.safetensors"))
        loaded = CLIPTextModel.from_pretrained(scratch).eval()
    with torch.no_grad():
        out = loaded(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    np.testing.assert_array_equal(out, expected)


def openclip_state(model: CLIPTextModel, prefix: str = "cond_stage_model.model.") -> dict:
    """The model's weights under SD 2's OpenCLIP names (the inverse of
    ``clip_state_from_single_file``), with one more random layer, ``text_projection`` and
    ``logit_scale``, as SD 2's checkpoints carry them."""
    config = model.config
    extra = tiny_model(
        {BOS: 0, EOS: 1, **{str(i): i for i in range(config.vocab_size)}},
        hidden_act=config.hidden_act, num_hidden_layers=config.num_hidden_layers + 1,
        num_attention_heads=config.num_attention_heads, eos_token_id=config.eos_token_id,
    )  # fmt: skip
    hf = {key.removeprefix("text_model."): value for key, value in published_state(model).items()}
    for key, value in extra.state_dict().items():
        if key.startswith(f"encoder.layers.{config.num_hidden_layers}."):
            hf[key] = value
    renames = [
        ("embeddings.token_embedding.weight", "token_embedding.weight"),
        ("embeddings.position_embedding.weight", "positional_embedding"),
        ("final_layer_norm.", "ln_final."),
        ("encoder.layers.", "transformer.resblocks."),
        (".layer_norm1.", ".ln_1."),
        (".layer_norm2.", ".ln_2."),
        (".self_attn.out_proj.", ".attn.out_proj."),
        (".mlp.fc1.", ".mlp.c_fc."),
        (".mlp.fc2.", ".mlp.c_proj."),
    ]
    state = {}
    for key, value in hf.items():
        if any(f".self_attn.{p}_proj." in key for p in "qkv"):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        state[prefix + key] = value.contiguous()
    for layer in range(config.num_hidden_layers + 1):
        source = f"encoder.layers.{layer}.self_attn"
        target = f"{prefix}transformer.resblocks.{layer}.attn"
        for kind, suffix in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            state[f"{target}.{suffix}"] = torch.cat(
                [hf[f"{source}.{p}_proj.{kind}"] for p in "qkv"]
            ).contiguous()
    state[prefix + "text_projection"] = torch.randn(config.hidden_size, 6)
    state[prefix + "logit_scale"] = torch.tensor(4.6052)
    return state


def write_single_files(model: CLIPTextModel) -> None:
    """SD 1 and SD 2 single-file layouts of ``model``, each checked to convert back to its
    state dict through diffusers' own conversion."""
    expected = published_state(model)
    position_ids = torch.arange(MAX_LENGTH)[None]
    sd1 = {f"cond_stage_model.transformer.{key}": value for key, value in expected.items()}
    sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"] = position_ids
    sd1.update(OTHER_COMPONENTS)
    back = convert_ldm_clip_checkpoint(sd1)
    assert back.pop("text_model.embeddings.position_ids") is position_ids
    assert back.keys() == expected.keys() and all(torch.equal(back[k], expected[k]) for k in back)
    save_file(sd1, os.path.join(OUT, "sd1_single_file.safetensors"))

    sd2 = {**openclip_state(model), **OTHER_COMPONENTS}
    back = convert_open_clip_checkpoint(model, sd2)
    # diffusers drops SD 2's 24th layer by name (resblocks.23); it is loaded with
    # load_model_dict_into_meta, which skips keys the model lacks: here the extra layer.
    dropped = f"text_model.encoder.layers.{model.config.num_hidden_layers}."
    back = {key: value for key, value in back.items() if not key.startswith(dropped)}
    assert back.keys() == expected.keys(), sorted(set(back) ^ set(expected))
    assert all(torch.equal(back[k], expected[k]) for k in back)
    save_file(sd2, os.path.join(OUT, "sd2_single_file.safetensors"))


FULL_SIZE = {
    "sd15_text_encoder_shapes.json": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=768,
    ),
    "sd21_text_encoder_shapes.json": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=512,
    ),
}  # fmt: skip


def write_full_size_tables() -> None:
    for name, arguments in FULL_SIZE.items():
        config = CLIPTextConfig(**arguments)
        with accelerate.init_empty_weights():
            model = CLIPTextModel(config)
        shapes = {key: list(value.shape) for key, value in published_state(model).items()}
        with open(os.path.join(OUT, name), "w") as file:
            json.dump(dict(config=config.to_dict(), shapes=shapes), file, separators=(",", ":"))


def main() -> None:
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    expected, vocab = write_tokenizers()
    with open(os.path.join(OUT, "tokenizer_prompts.json"), "w", encoding="utf-8") as file:
        json.dump(PROMPTS, file, ensure_ascii=False, indent=0)
    np.savez_compressed(
        os.path.join(OUT, "tokenizer_ids.npz"),
        **{folder: np.asarray(ids, np.int32) for folder, ids in expected.items()},
    )
    arrays = {}
    for folder, overrides in MODELS.items():
        model = tiny_model(vocab, **overrides)
        model.save_pretrained(os.path.join(OUT, folder), safe_serialization=True)
        ids_of = expected["tokenizer" if folder == "text_encoder" else "tokenizer_sd2"]
        ids = np.asarray([ids_of[i] for i in OUTPUT_PROMPTS], np.int32)
        # Short random ids without an EOS: L < max_positions, and the pooled row of an id
        # sequence without EOS (argmax of the ids, or position 0).
        random_ids = (
            np.random.default_rng(len(folder)).integers(0, len(vocab) - 2, (2, 9)).astype(np.int32)
        )
        for tag, batch in (("", ids), ("random_", random_ids)):
            for key, value in run_model(model, batch).items():
                arrays[f"{folder}/{tag}{key}"] = value
        check_published_layout(model, ids, arrays[f"{folder}/last_hidden_state"])
        if folder == "text_encoder_gelu":
            write_single_files(model)
    np.savez_compressed(os.path.join(OUT, "outputs.npz"), **arrays)
    write_full_size_tables()
    versions = dict(
        transformers=transformers.__version__, diffusers=diffusers.__version__,
        tokenizers=tokenizers.__version__, accelerate=accelerate.__version__,
        safetensors=safetensors.__version__, torch=torch.__version__,
    )  # fmt: skip
    with open(os.path.join(OUT, "versions.json"), "w") as file:
        json.dump(versions, file, indent=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
