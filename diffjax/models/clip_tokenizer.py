"""CLIP's BPE tokenizer (Radford et al. 2021, arXiv:2103.00020, Sec. 2.5; byte-level BPE,
Sennrich et al. 2016 and Radford et al. 2019), the prompt tokenizer of Stable Diffusion 1 and 2,
on HF's ``tokenizers`` (Rust) library, without transformers or torch.

The pipeline is the one transformers builds for ``CLIPTokenizer`` (``CLIPConverter``):

1. normalise: Unicode NFC, every whitespace run to one space, lowercase;
2. split into the matches of CLIP's pattern ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
   [^\\s\\p{L}\\p{N}]+`` (contractions, letter runs, single digits, punctuation runs;
   whitespace dropped);
3. map each piece's UTF-8 bytes to GPT-2's printable byte symbols;
4. BPE each piece with the ranked merges, its last symbol marked with ``</w>``;
5. ``<|startoftext|> ... <|endoftext|>`` around the ids.

The special tokens (BOS, EOS, UNK, PAD) are matched in the prompt before all of this, as
transformers' added tokens are: SD 2's pad token ``!`` makes every ``!`` in a prompt the id of
``!`` (0), as it does in transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

__all__ = ["CLIP_SPLIT_PATTERN", "CLIPTokenizer"]

CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
"""CLIP's pre-tokenization pattern: the pieces BPE runs on are its matches."""

_END_OF_WORD = "</w>"
_DEFAULT_TOKENS = dict(
    bos_token="<|startoftext|>",
    eos_token="<|endoftext|>",
    unk_token="<|endoftext|>",
    pad_token="<|endoftext|>",
)
_CLIP_CONTEXT = 77
# transformers writes model_max_length = int(1e30) for "no limit".
_NO_LIMIT = 10**29
_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized")


def _special(token: str | Mapping[str, Any] | AddedToken) -> AddedToken:
    """A special :class:`tokenizers.AddedToken` from a config entry: a dict with ``content``
    and flags, or a string (not normalised, as transformers reads one)."""
    if isinstance(token, AddedToken):
        return token
    flags = token if isinstance(token, Mapping) else {"content": token}
    return AddedToken(
        flags["content"], special=True, **{key: bool(flags.get(key, False)) for key in _TOKEN_FLAGS}
    )


class CLIPTokenizer:
    """CLIP's tokenizer (module docstring): ``tokenizer(prompts) -> [B, 77] int32`` ids, as SD
    pipelines call transformers' (``padding="max_length", truncation=True``).

    Args:
      vocab: ``{token: id}`` (``vocab.json``): the 256 byte symbols, their ``</w>`` forms, one
        token per merge, ``<|startoftext|>``, ``<|endoftext|>``.
      merges: the ranked merges (``merges.txt``), e.g. ``[('t', 'h'), ('th', 'e</w>')]``.
      bos_token: a special token, a string or a ``tokenizers.AddedToken``.
      eos_token: like ``bos_token``.
      unk_token: like ``bos_token``.
      pad_token: like ``bos_token`` (SD 1 pads with ``<|endoftext|>``, SD 2 with ``!``).
      model_max_length: the default ``max_length`` (77: CLIP's context).

    Attributes:
      backend: the ``tokenizers.Tokenizer`` (``backend.encode(prompt).ids``: unpadded and
        untruncated ids, BOS and EOS included).
      bos_token_id, eos_token_id, pad_token_id, model_max_length: as named.

    Raises:
      ValueError: a special token that is not in the vocabulary.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str | AddedToken = _DEFAULT_TOKENS["bos_token"],
        eos_token: str | AddedToken = _DEFAULT_TOKENS["eos_token"],
        unk_token: str | AddedToken = _DEFAULT_TOKENS["unk_token"],
        pad_token: str | AddedToken = _DEFAULT_TOKENS["pad_token"],
        model_max_length: int = _CLIP_CONTEXT,
    ) -> None:
        given = dict(
            bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token
        )
        tokens = {key: _special(value) for key, value in given.items()}
        for key, token in tokens.items():
            if token.content not in vocab:
                raise ValueError(f"{key}={token.content!r} is not in the vocabulary.")
        bpe = BPE(
            vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
            end_of_word_suffix=_END_OF_WORD, fuse_unk=False, unk_token=tokens["unk_token"].content,
        )  # fmt: skip
        backend = Tokenizer(bpe)
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        bos, eos = tokens["bos_token"].content, tokens["eos_token"].content
        self.bos_token_id, self.eos_token_id = vocab[bos], vocab[eos]
        self.pad_token_id = vocab[tokens["pad_token"].content]
        # BOS ... EOS, as transformers' (a RoBERTa template: one sequence <s> ... </s>).
        backend.post_processor = processors.RobertaProcessing(
            (eos, self.eos_token_id), (bos, self.bos_token_id), trim_offsets=False,
            add_prefix_space=False,
        )  # fmt: skip
        # One entry per token: a token named twice (SD 1.5's folders: EOS normalised, the same
        # string as PAD not) takes the flags of its last name, as transformers 5 does.
        backend.add_special_tokens(list({t.content: t for t in tokens.values()}.values()))
        self.backend = backend
        self.model_max_length = model_max_length

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> CLIPTokenizer:
        """Reads a diffusers ``tokenizer/`` folder (transformers' ``CLIPTokenizer`` files).

        ``vocab.json`` and ``merges.txt`` are required; ``tokenizer_config.json`` and
        ``special_tokens_map.json``, when present, give the special tokens and
        ``model_max_length`` as transformers reads them: ``special_tokens_map.json`` overrides
        the config's tokens unless the config lists ``added_tokens_decoder`` (then it is
        ignored). SD 2's folders say ``pad_token: "!"`` there.

        Raises:
          FileNotFoundError: ``vocab.json`` or ``merges.txt`` is missing (a folder with only
            ``tokenizer.json``, as transformers >= 5 saves, is not supported);
          ValueError: added tokens beyond the vocabulary's special ones (``added_tokens.json``
            or ``added_tokens_decoder``: textual-inversion tokens are not supported), a malformed
            ``merges.txt``, or a special token outside the vocabulary.
        """

        def path(name: str) -> str:
            return os.path.join(folder, name)

        for name in ("vocab.json", "merges.txt"):
            if not os.path.isfile(path(name)):
                raise FileNotFoundError(
                    f"{path(name)} does not exist; a CLIP tokenizer folder holds vocab.json, "
                    "merges.txt and optionally tokenizer_config.json and special_tokens_map.json "
                    "(a tokenizer.json-only folder is not supported)."
                )
        with open(path("vocab.json"), encoding="utf-8") as file:
            vocab = json.load(file)
        added = _read_json(path("added_tokens.json"))
        if any(vocab.get(token) != index for token, index in added.items()):
            raise ValueError(f"{path('added_tokens.json')}: added tokens are not supported.")
        with open(path("merges.txt"), encoding="utf-8") as file:
            lines = [line.rstrip("\r\n") for line in file]
        merges = []
        for number, line in enumerate(lines, start=1):
            if not line or (number == 1 and line.startswith("#version")):
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"{path('merges.txt')} line {number}: {line!r} is not a pair.")
            merges.append((pair[0], pair[1]))
        config = _read_json(path("tokenizer_config.json"))
        decoder = list(config.get("added_tokens_decoder", {}).values())
        if not decoder:
            config.update(_read_json(path("special_tokens_map.json")))
        tokens = {}
        for key, default in _DEFAULT_TOKENS.items():
            token = config.get(key) or default
            content = token["content"] if isinstance(token, Mapping) else token
            # transformers replaces a token listed in added_tokens_decoder by that entry.
            entry = next((entry for entry in decoder if entry["content"] == content), None)
            tokens[key] = _special(token if entry is None else entry)
        extra = {entry["content"] for entry in decoder} - {t.content for t in tokens.values()}
        if extra:
            raise ValueError(
                f"{path('tokenizer_config.json')} adds tokens {sorted(extra)} beyond the special "
                "ones; added tokens are not supported."
            )
        max_length = int(config.get("model_max_length") or _CLIP_CONTEXT)
        return cls(
            vocab, merges, **tokens,
            model_max_length=_CLIP_CONTEXT if max_length >= _NO_LIMIT else max_length,
        )  # fmt: skip

    def __call__(self, prompts: Sequence[str] | str, max_length: int | None = None) -> np.ndarray:
        """Token ids ``[B, max_length]`` int32 of ``B`` prompts (one string: ``B = 1``):
        ``BOS, ids..., EOS`` then ``pad_token`` to ``max_length``; a longer prompt is cut to
        its first ``max_length - 2`` ids, keeping BOS and EOS.

        Args:
          prompts: the prompts.
          max_length: the length (None: ``model_max_length``, 77 for SD).

        Raises:
          ValueError: ``max_length < 2``; TypeError: a prompt that is not a string.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = self.model_max_length if max_length is None else int(max_length)
        if length < 2:
            raise ValueError(f"max_length={length}; expected at least 2 (BOS and EOS).")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be strings, got {type(prompt).__name__}.")
        ids = np.full((len(prompts), length), self.pad_token_id, np.int32)
        for row, encoding in enumerate(self.backend.encode_batch(prompts)):
            tokens = encoding.ids
            if len(tokens) > length:
                tokens = [*tokens[: length - 1], self.eos_token_id]
            ids[row, : len(tokens)] = tokens
        return ids


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)
