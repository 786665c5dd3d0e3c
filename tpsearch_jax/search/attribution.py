"""Why this match, for any model: which phrases of the query and which parts of the image the score comes from.

Phrases (leave-one-phrase-out): the query's phrases (``query_text.phrases``) are removed one at a time and the
score drop of each result is that phrase's contribution — one text batch of P + 1 queries per search. Occlusion:
the image is scored again with each block of a grid masked (set to 0 after normalisation, i.e. the dataset's mean
colour); the score drop per block is the map — one image batch of 1 + G images per result. Both are score
differences of the model itself, so they hold for global and part models alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from tpsearch_jax.search import explain, query_text

MAX_BLOCKS = 48  # occlusion blocks per image: one forward of at most 49 images


def phrase_drops(text: str, score_texts: Callable[[Sequence[str]], np.ndarray]) -> tuple[list[tuple[int, int]],
                                                                                          np.ndarray]:
  """A query + ``score_texts`` (texts [T] → scores [T, K] of the K results) → (phrase spans [P], drops f32 [P, K]).

  drops[p, k] = score(query) − score(query without phrase p) for result k; a query of one phrase gives that
  phrase the whole score minus the score of the empty query."""
  spans = query_text.phrases(text)
  if not spans:
    return [], np.zeros((0, 0), np.float32)
  variants = [text] + [query_text.without(text, s) for s in spans]
  scores = np.asarray(score_texts(variants), np.float64)
  return spans, (scores[:1] - scores[1:]).astype(np.float32)


def phrase_json(text: str, spans: Sequence[tuple[int, int]], drops: np.ndarray) -> list[list[dict]]:
  """Spans [P] + drops [P, K] → per result [K] its phrases [{"text", "start", "end", "drop"}] in query order."""
  return [[{"text": text[a:b], "start": a, "end": b, "drop": round(float(drops[p, k]), 4)}
           for p, (a, b) in enumerate(spans)] for k in range(drops.shape[1])]


def block_grid(image_size: tuple[int, int], patch: int, max_blocks: int = MAX_BLOCKS) -> tuple[int, int, int]:
  """(H, W) + the model's patch size → (block side in pixels, rows, cols): the smallest multiple of the patch whose
  grid has at most ``max_blocks`` blocks (edge blocks may be cut)."""
  h, w = image_size
  side = max(1, int(patch))
  while -(-h // side) * -(-w // side) > max_blocks:
    side += max(1, int(patch))
  return side, -(-h // side), -(-w // side)


def occluded_batch(image: np.ndarray, side: int) -> np.ndarray:
  """A preprocessed image f32 [H, W, 3] → [1 + G, H, W, 3]: the image, then one copy per block (row-major) with
  that side × side block set to 0."""
  h, w, _ = image.shape
  rows, cols = -(-h // side), -(-w // side)
  out = np.repeat(image[None].astype(np.float32), 1 + rows * cols, axis=0)
  for r in range(rows):
    for c in range(cols):
      out[1 + r * cols + c, r * side:(r + 1) * side, c * side:(c + 1) * side] = 0.0
  return out


def occlusion_map(image: np.ndarray, side: int, score_images: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """A preprocessed image [H, W, 3] + ``score_images`` (images [B, H, W, 3] → scores [B]) → drops f32 [rows, cols]:
  score(image) − score(image with that block masked)."""
  h, w, _ = image.shape
  rows, cols = -(-h // side), -(-w // side)
  scores = np.asarray(score_images(occluded_batch(image, side)), np.float64)
  return (scores[0] - scores[1:]).reshape(rows, cols).astype(np.float32)


def draw_occlusion(image: Image.Image, drops: np.ndarray, side: int, image_size: tuple[int, int],
                   height: int = 256, alpha: float = 0.5) -> Image.Image:
  """The image (resized to ``height``) with the occlusion map [rows, cols] over it: the blocks whose masking drops
  the score most are bright, those that raise it (or do nothing) dark. → RGB image."""
  h, w = image_size
  width = max(1, round(image.width * height / image.height))
  base = image.convert("RGB").resize((width, height), Image.BILINEAR)
  top = float(np.max(drops)) if drops.size else 0.0
  level = np.clip(drops / top, 0, 1) if top > 0 else np.zeros_like(drops)
  full = np.kron(level, np.ones((side, side)))[:h, :w]  # block values on the model's pixel grid
  heat = Image.fromarray(explain.heat(full)).resize((width, height), Image.NEAREST)
  return Image.blend(base, heat, alpha)
