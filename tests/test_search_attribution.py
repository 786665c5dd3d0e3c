"""What the model reads of a query, and why a result matches, on hand-built cases (no model): words past the context,
sentences and phrases, leave-one-phrase-out drops with a bag-of-words encoder, occlusion maps with a colour scorer,
and sentence modes of the searcher's merge."""

from __future__ import annotations

import numpy as np
import pytest

from tpsearch_jax.models.clip import tokenizer as clip_tokenizer
from tpsearch_jax.search import attribution, query_text


def word_tokenize(texts, context_length):
  """A word-level tokenizer with the caption tokenizers' layout: [1] + one id per word + [2], cut to L ending in 2."""
  out = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = ([1] + [10 + len(w) for w in text.split()] + [2])[:context_length]
    ids[-1] = 2
    out[row, :len(ids)] = ids
  return out


def test_reading_marks_the_words_past_the_context():
  text = "a man in a red shirt with a black backpack"  # 10 words → 12 ids with the markers
  r = query_text.reading(text, word_tokenize, 8)  # room for 6 words
  assert (r["read"], r["tokens"], r["context_length"]) == (8, 12, 8)
  assert r["dropped"] == ["with", "a", "black", "backpack"]
  assert text[r["dropped_from"]:] == "with a black backpack"
  whole = query_text.reading(text, word_tokenize, 12)  # exactly fits
  assert whole["dropped"] == [] and whole["dropped_from"] is None and whole["read"] == 12


def test_reading_with_clip_counts_each_words_bpe_pieces():
  text = "A woman in a long pink overcoat. She also wears bright yellow sneakers and carries an umbrella."
  pieces = [len(clip_tokenizer.default_tokenizer().encode(w)) for w in text.split()]  # word by word
  total = 2 + sum(pieces)
  assert query_text.reading(text, clip_tokenizer.tokenize, 77)["tokens"] == total
  context = 2 + sum(pieces[:7])  # room for the first 7 words exactly: the 8th ("She") is not read
  r = query_text.reading(text, clip_tokenizer.tokenize, context)
  assert r["dropped"] == text.split()[7:] and r["read"] == context
  assert np.count_nonzero(clip_tokenizer.tokenize([text], context)) == r["read"]


def test_sentences_and_phrases():
  text = "A man in a red shirt, with a black backpack and white shoes. He carries a bag; walking fast"
  assert query_text.sentences(text) == ["A man in a red shirt, with a black backpack and white shoes.",
                                        "He carries a bag;", "walking fast"]
  got = [text[a:b] for a, b in query_text.phrases(text)]
  assert got == ["A man in a red shirt", "with a black backpack", "and white shoes", "He carries a bag",
                 "walking fast"]
  assert query_text.without(text, query_text.phrases(text)[1]) == (
      "A man in a red shirt, and white shoes. He carries a bag; walking fast")
  assert query_text.sentences("no full stop") == ["no full stop"] and query_text.phrases("  ") == []


VOCAB = ("red", "shirt", "blue", "jeans", "black", "backpack")


def bag_of_words(texts):
  """texts [T] → L2-normalised counts of the VOCAB words [T, 6] (unknown words count for nothing; empty → 0)."""
  out = np.zeros((len(texts), len(VOCAB)))
  for i, t in enumerate(texts):
    for w in t.lower().replace(",", " ").split():
      if w in VOCAB:
        out[i, VOCAB.index(w)] += 1
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.where(norms > 0, norms, 1)


def test_phrase_that_matches_nothing_loses_nothing():
  image = bag_of_words(["red shirt blue jeans"])  # [1, 6]: (1, 1, 1, 1, 0, 0) / 2
  text = "a red shirt, with a purple hat and blue jeans"
  spans, drops = attribution.phrase_drops(text, lambda ts: bag_of_words(ts) @ image.T)
  assert [text[a:b] for a, b in spans] == ["a red shirt", "with a purple hat", "and blue jeans"]
  # full query: counts (1,1,1,1,0,0)/2 · image = 1; without "a red shirt": (0,0,1,1)/√2 · image = 1/√2
  want = np.asarray([[1 - 1 / np.sqrt(2)], [0.0], [1 - 1 / np.sqrt(2)]])
  np.testing.assert_allclose(drops, want, atol=1e-6)
  per_result = attribution.phrase_json(text, spans, drops)
  assert [p["text"] for p in per_result[0]] == ["a red shirt", "with a purple hat", "and blue jeans"]
  assert per_result[0][1]["drop"] == 0.0


def test_one_phrase_query_owns_the_whole_score():
  image = bag_of_words(["black backpack"])
  spans, drops = attribution.phrase_drops("black backpack", lambda ts: bag_of_words(ts) @ image.T)
  assert len(spans) == 1 and drops[0, 0] == pytest.approx(1.0)  # without it the query is empty: score 0


def red_fraction(batch):
  """images [B, H, W, 3] → the fraction of pixels whose red channel is above 0.5 (a one-word 'red' scorer)."""
  return (batch[..., 0] > 0.5).mean(axis=(1, 2))


def test_occlusion_drops_only_where_the_described_colour_is():
  image = np.full((32, 16, 3), -0.3, np.float32)
  image[8:16, 0:8] = (1.0, -1.0, -1.0)  # a red block exactly on the second row, first column of 8-pixel blocks
  drops = attribution.occlusion_map(image, 8, red_fraction)
  want = np.zeros((4, 2))
  want[1, 0] = 64 / 512  # masking it removes 64 red pixels of 512
  np.testing.assert_allclose(drops, want, atol=1e-7)


def test_occluded_batch_and_block_grid():
  batch = attribution.occluded_batch(np.ones((20, 12, 3), np.float32), 8)  # 3 × 2 blocks, edge ones cut
  assert batch.shape == (7, 20, 12, 3) and batch[0].min() == 1.0
  assert (batch[6, 16:20, 8:12] == 0).all() and batch[6, :16].min() == 1.0
  assert attribution.block_grid((384, 128), 16) == (32, 12, 4)  # 24 × 8 patches → 48 blocks of 2 × 2 patches
  assert attribution.block_grid((48, 16), 8) == (8, 6, 2)
