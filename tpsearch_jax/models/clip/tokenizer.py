"""CLIP byte-level BPE tokenizer with the person-search mask-token convention.

Vocabulary (49,408 ids) from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (MIT, vendored next to this file): the 256
byte symbols, their ``</w>`` (end-of-word) forms, then one id per merge. The last merge ("jekyll</w>") is dropped and
its id 49405 becomes ``<|mask|>``, so the MLM mask reuses that pretrained embedding row; 49406/49407 are the start and
end tokens. Because that merge is dropped, "jekyll" encodes to sub-word pieces instead of failing.

Text is cleaned as OpenAI does (ftfy, HTML-unescape twice, whitespace collapse, lower-case), split with CLIP's regex
and byte-pair encoded. Sequences are ``[SOT] + ids + [EOT]``, zero-padded; longer ones keep the first
``context_length`` ids and end with EOT.
"""

from __future__ import annotations

import functools
import gzip
import html
import pathlib
from collections.abc import Sequence

import ftfy
import numpy as np
import regex

VOCAB_PATH = pathlib.Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 48894 - 1  # the file's first 48,894 merges, minus the one whose id becomes the mask
VOCAB_SIZE = 49408
MASK_ID = 49405
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
_SPECIALS = {"<|startoftext|>": SOT_ID, "<|endoftext|>": EOT_ID}

# Special tokens kept whole, English contractions, letter runs, single digits, runs of anything else but whitespace.
_SPLIT = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+", regex.IGNORECASE)
_WHITESPACE = regex.compile(r"\s+")


def byte_symbols() -> tuple[list[str], list[int]]:
  """The 256 printable stand-ins for bytes in vocabulary order (list index = id), and the byte each one stands for."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in set(printable)]
  order = printable + others
  symbol = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
  return [symbol[b] for b in order], order


# Printable ASCII and ordinary whitespace without "&": ftfy and HTML-unescaping leave such text unchanged up to line
# breaks, which the whitespace collapse erases anyway (tests/test_tokenizer.py checks this against ftfy).
_PLAIN = regex.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def clean(text: str) -> str:
  """OpenAI's text normalisation (ftfy, HTML-unescape twice, whitespace collapse, lower-case): str -> str."""
  if not _PLAIN.fullmatch(text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return _WHITESPACE.sub(" ", text).strip().lower()


class ClipTokenizer:
  """Byte-level BPE over the vendored vocabulary. Per-word results are memoised (captions repeat words a lot)."""

  def __init__(self, vocab_path: str | pathlib.Path = VOCAB_PATH, cache_size: int = 1 << 18):
    with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")[1:NUM_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
      raise ValueError(f"{vocab_path}: expected {NUM_MERGES} merge lines of two symbols")
    symbols, byte_order = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    self._byte_symbol = [""] * 256
    for b, s in zip(byte_order, symbols):
      self._byte_symbol[b] = s
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self.decoder = {i: tok for tok, i in self.encoder.items()} | {MASK_ID: "<|mask|>"} | {
        i: t for t, i in _SPECIALS.items()}
    self._symbol_byte = {s: b for b, s in enumerate(self._byte_symbol)}
    self._ranks = {m: r for r, m in enumerate(merges)}
    self._word_ids = functools.lru_cache(maxsize=cache_size)(self._encode_word)

  def _bpe(self, word: str) -> list[str]:
    """Byte-symbol string -> BPE pieces; the last piece carries the end-of-word marker."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
      rank, at = min((self._ranks.get(pair, NUM_MERGES), i) for i, pair in enumerate(zip(parts, parts[1:])))
      if rank == NUM_MERGES:
        break
      first, second = parts[at], parts[at + 1]
      merged, i = parts[:at], at
      while i < len(parts):
        if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return parts

  def _encode_word(self, token: str) -> tuple[int, ...]:
    if token in _SPECIALS:
      return (_SPECIALS[token],)
    word = "".join(self._byte_symbol[b] for b in token.encode("utf-8"))
    return tuple(self.encoder[p] for p in self._bpe(word))

  def encode(self, text: str) -> list[int]:
    """One text -> BPE ids without SOT/EOT."""
    ids = []
    for token in _SPLIT.findall(clean(text)):
      ids.extend(self._word_ids(token))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """One id row -> text: a leading SOT is dropped and decoding stops at the first EOT (padding follows it);
    0 before that is the symbol "!" and the mask shows as ``<|mask|>``."""
    ids = [int(i) for i in ids]
    ids = ids[1:] if ids[:1] == [SOT_ID] else ids
    pieces = [self.decoder[i] for i in (ids[:ids.index(EOT_ID)] if EOT_ID in ids else ids)]
    out = bytearray()
    for piece in pieces:
      if piece == "<|mask|>":
        out += b" <|mask|> "
        continue
      end = piece.endswith("</w>")
      out += bytes(self._symbol_byte[c] for c in piece.removesuffix("</w>"))
      if end:
        out += b" "
    return _WHITESPACE.sub(" ", out.decode("utf-8", errors="replace")).strip()

  def tokenize(self, texts: Sequence[str] | str, context_length: int = 77) -> np.ndarray:
    """texts (N strings) -> int32 [N, context_length]: [SOT] ids [EOT] 0…; too long: first L ids, last set to EOT."""
    if isinstance(texts, str):
      texts = [texts]
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"text {row} is {type(text).__name__}, expected str")
      ids = [SOT_ID, *self.encode(text), EOT_ID][:context_length]
      ids[-1] = EOT_ID
      out[row, :len(ids)] = ids
    return out


@functools.cache
def default_tokenizer() -> ClipTokenizer:
  """The process-wide tokenizer over the vendored vocabulary (built once, ~0.3 s)."""
  return ClipTokenizer()


def tokenize(texts: Sequence[str] | str, context_length: int = 77) -> np.ndarray:
  """texts (N strings) -> int32 [N, context_length]; see ``ClipTokenizer.tokenize``."""
  return default_tokenizer().tokenize(texts, context_length)
