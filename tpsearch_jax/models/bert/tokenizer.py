"""WordPiece tokenization for BERT through transformers' ``BertTokenizer``, from a local vocab.txt (no download).

Sequences are ``[CLS] pieces [SEP]``, zero-padded ([PAD] must be id 0: the models derive the attention mask from
``ids != 0``) and truncated to ``context_length`` word pieces with [SEP] kept last. Lower-casing follows the folder's
tokenizer_config.json (``do_lower_case``), True when it is absent, as for the uncased model. There is no MLM
masking path for BERT ids: the training pipeline leaves them unmasked (``masking.py`` is CLIP's recipe).
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence

import numpy as np

# A small vocabulary (caption words of synthetic_pedes and the test fixtures, letters and ## pieces) for BERT towers
# trained from scratch; written by tools/make_backbone_fixtures.py, identical to tests/fixtures/hf_tiny_bert/vocab.txt.
TINY_VOCAB = pathlib.Path(__file__).with_name("tiny_vocab.txt")


def vocab_file(path: str | pathlib.Path) -> pathlib.Path:
  """A BERT folder (holding vocab.txt) or the vocab.txt itself → the vocab.txt path; FileNotFoundError if absent."""
  path = pathlib.Path(path)
  vocab = path / "vocab.txt" if path.is_dir() else path
  if not vocab.is_file():
    raise FileNotFoundError(f"no BERT vocab.txt at {vocab}: set config.data.tokenizer_path to the BERT folder (e.g. "
                            f"a download of bert-base-uncased) or its vocab.txt")
  return vocab


class BertWordPiece:
  """Tokenizer of one vocab. ``tokenize(texts, L)`` → int32 [N, L]."""

  def __init__(self, path: str | pathlib.Path, lower_case: bool | None = None):
    from transformers import BertTokenizer  # imported here: only BERT runs need it (and it logs about torch)
    vocab = vocab_file(path)
    if lower_case is None:
      settings = vocab.with_name("tokenizer_config.json")
      lower_case = json.loads(settings.read_text()).get("do_lower_case", True) if settings.is_file() else True
    self.path, self.lower_case = vocab, bool(lower_case)
    self._tok = BertTokenizer(vocab=str(vocab), do_lower_case=self.lower_case)
    self.vocab_size = len(self._tok.get_vocab())
    if self._tok.pad_token_id != 0:
      raise ValueError(f"{vocab}: [PAD] has id {self._tok.pad_token_id}; the models need padding id 0")
    self.cls_id, self.sep_id, self.mask_id = self._tok.cls_token_id, self._tok.sep_token_id, self._tok.mask_token_id

  def encode(self, text: str) -> list[int]:
    """One caption → its ids with [CLS] and [SEP], untruncated."""
    return list(self._tok(text)["input_ids"])

  def tokenize(self, texts: Sequence[str] | str, context_length: int) -> np.ndarray:
    """Captions → int32 [N, context_length]: [CLS] … [SEP], zero-padded, truncated keeping [SEP] last."""
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 2:
      raise ValueError(f"context_length {context_length} leaves no room for [CLS] and [SEP]")
    if not texts:
      return np.zeros((0, context_length), np.int32)
    out = self._tok(list(texts), padding="max_length", truncation=True, max_length=int(context_length))
    return np.asarray(out["input_ids"], np.int32)


@functools.lru_cache(maxsize=4)
def bert_tokenizer(path: str) -> BertWordPiece:
  """One cached tokenizer per vocab path."""
  return BertWordPiece(path)
