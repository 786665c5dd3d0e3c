"""The batch contract: key names, shapes and dtypes of train and eval batches, and one fake batch for tests/benchmarks.

Train batch (B rows, H×W images, L = ``config.data.context_length``; ``BatchOptions`` holds what the shapes and id
ranges depend on, ``training.options.Options.batch_options`` reads it from a run's options):
  images       float32 [B, H, W, 3]  CLIP-normalised RGB
  caption_ids  int32   [B, L]        SOT … EOT, 0-padded (the masked ids when ``data.caption_uses_mlm_ids``)
  mlm_ids      int32   [B, L]        caption ids with the chosen positions replaced by the mask token
  mlm_labels   int32   [B, L]        original id at the masked positions, 0 elsewhere (ignored)
  pids         int32   [B]           identity label in [0, num_classes)
  image_ids    int32   [B]           image index of the row (several captions share an image)
Eval image batch: images, pids, valid bool [B] (False = padding row); eval text batch: caption_ids, pids, valid.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

TRAIN_KEYS = ("images", "caption_ids", "mlm_ids", "mlm_labels", "pids", "image_ids")
EVAL_IMAGE_KEYS = ("images", "pids", "valid")
EVAL_TEXT_KEYS = ("caption_ids", "pids", "valid")  # + "index" from the eval pipeline (needed for query subsets)
MLM_KEYS = ("mlm_ids", "mlm_labels")
# The CLIP tokenizer's special ids (tpsearch_jax/models/clip/tokenizer.py; tests/test_layers.py checks they agree),
# written here so that the contract imports no model code.
SOT_ID, EOT_ID, MASK_ID = 49406, 49407, 49405


@dataclasses.dataclass(frozen=True)
class BatchOptions:
  """What a train batch's shapes and ids depend on: image_size (H, W), context_length L, num_classes (pids in
  [0, num_classes); 0 = not known yet, drawn as 1 class), bert_vocab_size (BERT text backbone: ids in [1, size);
  None = CLIP ids with MLM masking)."""

  image_size: tuple[int, int]
  context_length: int
  num_classes: int = 0
  bert_vocab_size: int | None = None


def train_shapes(options: BatchOptions, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of a train batch of ``batch_size`` rows."""
  h, w = options.image_size
  text = ((batch_size, options.context_length), np.dtype(np.int32))
  rows = ((batch_size,), np.dtype(np.int32))
  return {"images": ((batch_size, h, w, 3), np.dtype(np.float32)), "caption_ids": text, "mlm_ids": text,
          "mlm_labels": text, "pids": rows, "image_ids": rows}


def check_train_batch(batch: Mapping[str, object], needed: tuple[str, ...] = TRAIN_KEYS) -> None:
  """Raises KeyError naming the missing keys of a train batch."""
  missing = [k for k in needed if k not in batch]
  if missing:
    raise KeyError(f"train batch has no {missing} (present: {sorted(batch)})")


def fake_train_batch(options: BatchOptions, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A valid train batch of the contract's shapes: normal images, captions of random length, 15 % MLM masking.

  pids are drawn in [0, options.num_classes) (1 class when it is 0). With ``options.bert_vocab_size`` (a BERT text
  backbone) the ids are drawn in [1, bert_vocab_size), unmasked.
  """
  rng = np.random.default_rng(seed)
  shapes = train_shapes(options, batch_size)
  length = options.context_length
  ids = np.zeros((batch_size, length), np.int32)
  lengths = rng.integers(min(8, length - 1), length, size=batch_size)  # EOT position, ≥ 1
  for i, n in enumerate(lengths):
    ids[i, 0] = SOT_ID
    ids[i, 1:n] = rng.integers(1, MASK_ID, size=n - 1)
    ids[i, n] = EOT_ID
  eligible = (ids > 0) & (ids < MASK_ID) & (ids != SOT_ID)
  chosen = eligible & (rng.random(ids.shape) < 0.15)
  labels = np.where(chosen, ids, 0).astype(np.int32)
  num_classes = max(options.num_classes, 1)
  if options.bert_vocab_size is not None:  # BERT ids: random word pieces, no MLM masking path
    ids = np.where(ids > 0, rng.integers(1, options.bert_vocab_size, size=ids.shape), 0).astype(np.int32)
    chosen, labels = np.zeros(ids.shape, bool), np.zeros(ids.shape, np.int32)
  return {"images": rng.standard_normal(shapes["images"][0], dtype=np.float32), "caption_ids": ids,
          "mlm_ids": np.where(chosen, MASK_ID, ids).astype(np.int32), "mlm_labels": labels,
          "pids": rng.integers(0, num_classes, size=batch_size).astype(np.int32),
          "image_ids": np.arange(batch_size, dtype=np.int32)}
