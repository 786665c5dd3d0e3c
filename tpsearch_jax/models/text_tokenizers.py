"""The caption tokenizer of a run, by ``config.data.tokenizer``: "clip" (CLIP BPE, the default) or "bert" (WordPiece
from ``config.data.tokenizer_path``, a BERT folder or its vocab.txt). Both give int32 [N, L] ids, 0 = padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tpsearch_jax.models.bert.tokenizer import bert_tokenizer
from tpsearch_jax.models.clip import tokenizer as clip_tokenizer

TOKENIZERS = ("clip", "bert")


def tokenizer_name(config_data) -> str:
  """``config.data.tokenizer`` ("clip" when the field is absent, as in run configs written before it existed)."""
  name = getattr(config_data, "tokenizer", None) or "clip"
  if name not in TOKENIZERS:
    raise ValueError(f"config.data.tokenizer must be one of {TOKENIZERS}, got {name!r}")
  return name


def caption_tokenizer(config_data) -> Callable[[Sequence[str], int], np.ndarray]:
  """(texts, context_length) → int32 [N, context_length] ids with the run's tokenizer."""
  if tokenizer_name(config_data) == "clip":
    return clip_tokenizer.tokenize
  path = getattr(config_data, "tokenizer_path", None)
  if not path:
    raise ValueError("config.data.tokenizer='bert' needs config.data.tokenizer_path: a BERT folder holding vocab.txt "
                     "(e.g. the bert-base-uncased download given as config.init.bert) or the vocab.txt itself")
  return bert_tokenizer(str(path)).tokenize


def masks_tokens(config_data) -> bool:
  """Whether the train pipeline applies the CLIP-id MLM masking (``data/masking.py``); BERT ids stay unmasked."""
  return tokenizer_name(config_data) == "clip"
