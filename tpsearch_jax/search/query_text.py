"""What the model reads of a query: its words, the ones past the context (dropped), its sentences and phrases.

A word is a run of non-space characters. Both caption tokenizers (CLIP BPE, BERT WordPiece) tokenize a query word by
word and truncate it as [start] + the first L − 2 ids + [end], so word i is read in full exactly when the prefix
ending with it tokenizes to at most L ids (its start and end markers included); ``reading`` counts that with one
tokenizer call over every prefix. Sentences end at . ! ? ; and phrases are split at punctuation and at the
conjunctions of ``CONJUNCTIONS`` (which stay with the phrase they open); both are character spans of the query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

CONJUNCTIONS = frozenset({"and", "or", "but", "while", "with", "whereas", "plus"})
LONG_QUERY_MODES = ("truncate", "mean", "max")  # the whole query cut at the context; sentences combined
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;]+(?=\s|$)")
_PHRASE_BREAK = re.compile(r"[,.;:!?()]+")

Tokenize = Callable[[Sequence[str], int], np.ndarray]  # (texts [N], L) → int32 [N, L], 0 = padding


def words(text: str) -> list[tuple[str, int, int]]:
  """The words of ``text`` as (word, start, end) character spans, in order."""
  return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def reading(text: str, tokenize: Tokenize, context_length: int) -> dict:
  """A query → {"read": ids the model reads, "tokens": ids of the whole query, "context_length": L (all three with
  the start and end markers), "dropped": the words not read in full, "dropped_from": character offset of the first
  dropped word or None}."""
  spans = words(text)
  if not spans:
    return {"read": int(np.count_nonzero(tokenize([text], context_length))), "tokens": 2,
            "context_length": int(context_length), "dropped": [], "dropped_from": None}
  big = 4 * len(text) + 8  # a character is at most 4 byte-level tokens
  prefixes = [text[:end] for _, _, end in spans]
  counts = np.count_nonzero(tokenize(prefixes, big), axis=1)
  first = int(np.argmax(counts > context_length)) if counts[-1] > context_length else None
  return {"read": int(min(counts[-1], context_length)), "tokens": int(counts[-1]),
          "context_length": int(context_length),
          "dropped": [] if first is None else [w for w, _, _ in spans[first:]],
          "dropped_from": None if first is None else spans[first][1]}


def sentences(text: str) -> list[str]:
  """The sentences of ``text`` (ending at . ! ? ; followed by a space or the end), stripped, none empty."""
  out, start = [], 0
  for m in _SENTENCE_END.finditer(text):
    out.append(text[start:m.end()].strip())
    start = m.end()
  out.append(text[start:].strip())
  return [s for s in out if s.strip(" .!?;")]


def phrases(text: str) -> list[tuple[int, int]]:
  """Phrase spans [(start, end)] of ``text``: split at punctuation and before each conjunction; spans hold words
  only (no surrounding punctuation or space)."""
  out, current = [], None
  for w, start, end in words(text):
    for piece in _pieces(w, start):
      token, a, b = piece
      if token is None:  # punctuation: closes the open phrase
        if current:
          out.append(current)
        current = None
        continue
      if token.lower() in CONJUNCTIONS and current:
        out.append(current)
        current = None
      current = (current[0], b) if current else (a, b)
  if current:
    out.append(current)
  return out


def _pieces(word: str, offset: int) -> list[tuple[str | None, int, int]]:
  """A word split at its punctuation: (text, start, end) for letters, (None, start, end) for a punctuation run."""
  out, pos = [], 0
  for m in _PHRASE_BREAK.finditer(word):
    if m.start() > pos:
      out.append((word[pos:m.start()], offset + pos, offset + m.start()))
    out.append((None, offset + m.start(), offset + m.end()))
    pos = m.end()
  if pos < len(word):
    out.append((word[pos:], offset + pos, offset + len(word)))
  return out


def without(text: str, span: tuple[int, int]) -> str:
  """``text`` with the characters of ``span`` removed and whitespace collapsed."""
  return " ".join((text[:span[0]] + " " + text[span[1]:]).split())
