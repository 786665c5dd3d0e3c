"""CLIP BPE tokenizer against ids from transformers' CLIPTokenizer (tools/make_tokenizer_golden.py)."""

from __future__ import annotations

import hashlib
import html
import json
import pathlib

import ftfy
import numpy as np
import pytest
import regex

from tpsearch_jax.models.clip import tokenizer

GOLDEN = json.loads((pathlib.Path(__file__).parent / "fixtures" / "tokenizer_golden.json").read_text("utf-8"))
CASES = GOLDEN["cases"]
OPENAI_GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # OpenAI CLIP / open_clip 3.3.0


def test_vendored_vocabulary_is_openai_file():
  assert hashlib.sha256(tokenizer.VOCAB_PATH.read_bytes()).hexdigest() == OPENAI_GZ_SHA256


def test_golden_covers_the_tricky_cases():
  assert len(CASES) >= 25
  assert any(len(c["ids"]) > 77 for c in CASES)
  assert all(tokenizer.MASK_ID not in c["ids"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: repr(c["text"][:24]))
def test_matches_golden_ids(case):
  full = case["ids"]
  got = tokenizer.tokenize([case["text"]], context_length=len(full) + 3)[0]
  np.testing.assert_array_equal(got, full + [0, 0, 0])


def test_batch_tokenize_pads_and_truncates_like_the_reference():
  texts = [c["text"] for c in CASES]
  got = tokenizer.tokenize(texts, context_length=77)
  assert got.dtype == np.int32 and got.shape == (len(texts), 77)
  for row, case in zip(got, CASES):
    full = case["ids"]
    want = full[:76] + [tokenizer.EOT_ID] if len(full) > 77 else full + [0] * (77 - len(full))
    np.testing.assert_array_equal(row, want, err_msg=case["text"])


def test_cache_does_not_change_results():
  texts = [c["text"] for c in CASES]
  fresh = tokenizer.ClipTokenizer()
  one_by_one = np.concatenate([fresh.tokenize([t], 77) for t in reversed(texts)])[::-1]
  np.testing.assert_array_equal(one_by_one, tokenizer.tokenize(texts, 77))


def test_dropped_merge_word_encodes_to_pieces_not_the_mask():
  ids = tokenizer.tokenize(["jekyll"], 8)[0]
  assert tokenizer.MASK_ID not in ids
  assert tokenizer.default_tokenizer().decode(ids) == "jekyll"


def test_decode_roundtrip_of_cleaned_text():
  tok = tokenizer.default_tokenizer()
  ids = tokenizer.tokenize(["A Woman’s  bag &amp; 2 shoes! 😀"], 77)[0]
  assert tok.decode(ids) == "a woman 's bag & 2 shoes ! 😀"


def test_rejects_non_strings_naming_the_row():
  with pytest.raises(TypeError, match="text 1"):
    tokenizer.tokenize(["ok", None])


def test_plain_ascii_shortcut_equals_full_cleaning():
  """clean() skips ftfy/HTML for printable ASCII without '&'; the full OpenAI cleaning must agree on such text."""
  def full(text):
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()

  rng = np.random.default_rng(0)
  alphabet = [chr(c) for c in range(0x20, 0x7f) if c != 0x26] + ["\t", "\n", "\r", "\r\n", "  ", "<b>", "'s", "\""]
  texts = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(3000)]
  for text in texts:
    assert tokenizer.clean(text) == full(text), repr(text)
