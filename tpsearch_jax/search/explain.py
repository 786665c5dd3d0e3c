"""Why this match: the retrieval cosine split into its pieces; the foreground map + stripes of part models.

The retrieval vector (``models/retrieval.py``) is [√w_1·p̂_1, …, √w_M·p̂_M] / √W (p̂_k the L2-normalised piece k,
W = Σ w_k), so for a text vector t and an image vector v, each [M·E], the score splits exactly into per-piece terms:

    t·v = Σ_k t_k·v_k,   t_k·v_k = w_k·cos_k / W   (t_k, v_k: the k-th E-slice)

``split_scores`` recovers every term ("contribution") and every piece cosine from the stored vectors alone. Pieces are
"global", then "coarse_1..N_D" and "part_1..P" with the part model; part i pairs image stripe i (rows
``stripe_bounds(gh, P)[i]`` of the gh×gw patch grid, top to bottom) with the query's i-th text part token.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from tpsearch_jax.models.part_decoder import stripe_bounds
from tpsearch_jax.training.options import Options


@dataclasses.dataclass(frozen=True)
class Layout:
  """The pieces of a retrieval vector: names [M], weights [M], piece width E; the patch grid and stripes (parts)."""

  names: tuple[str, ...]
  weights: tuple[float, ...]
  piece_dim: int
  grid: tuple[int, int] | None = None  # (gh, gw) patch grid, part models only
  stripes: tuple[tuple[int, int], ...] = ()  # [start, stop) grid rows of each stripe, part models only

  @property
  def has_parts(self) -> bool:
    return bool(self.stripes)

  def to_json(self) -> dict:
    return {"names": list(self.names), "weights": list(self.weights), "piece_dim": self.piece_dim,
            "grid": list(self.grid) if self.grid else None, "stripes": [list(s) for s in self.stripes]}

  @classmethod
  def from_json(cls, d: dict) -> "Layout":
    return cls(tuple(d["names"]), tuple(float(w) for w in d["weights"]), int(d["piece_dim"]),
               tuple(d["grid"]) if d.get("grid") else None, tuple(tuple(s) for s in d.get("stripes", ())))


def vector_layout(options: Options, dim: int, num_patches: int | None = None) -> Layout:
  """A run's options + its retrieval-vector width D (+ the foreground length N = gh·gw of part models) → its
  ``Layout``: the pieces and weights of ``RetrievalModel._piece_weights``, E = D / M, and the patch grid (gh, gw) with
  gh / gw = H / W of ``options.data.image_size`` (any backbone with a regular patch grid)."""
  m, w = options.model, options.model.embed_weights
  if not m.use_parts:
    return Layout(("global",), (1.0,), int(dim))
  nq, p = int(m.part.num_queries), int(m.part.num_parts)
  names = ("global",) + tuple(f"coarse_{i + 1}" for i in range(nq)) + tuple(f"part_{i + 1}" for i in range(p))
  weights = (float(w.global_),) + (float(w.coarse),) * nq + (float(w.part),) * p
  if dim % len(names) or not num_patches:
    raise ValueError(f"vectors of width {dim} with {num_patches} foreground values do not fit {len(names)} pieces "
                     "of a part model: rebuild the index with this run")
  h, wd = (int(v) for v in options.data.image_size)
  gh = round((num_patches * h / wd) ** 0.5)
  if gh < 1 or num_patches % gh:
    raise ValueError(f"cannot lay {num_patches} patches out as a grid of aspect {h}:{wd}")
  return Layout(names, weights, dim // len(names), (gh, num_patches // gh), stripe_bounds(gh, p))


def split_scores(text_vec: np.ndarray, image_vecs: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
  """text_vec [D], image_vecs [K, D] (D = M·E) → (contributions [K, M] summing to the scores, cosines [K, M]).

  A piece of weight 0 contributes 0 and gets cosine 0.
  """
  m, e = len(layout.names), layout.piece_dim
  if text_vec.shape[-1] != m * e or image_vecs.shape[-1] != m * e:
    raise ValueError(f"vectors of width {text_vec.shape[-1]} / {image_vecs.shape[-1]} do not match the index layout "
                     f"({m} pieces × {e}); rebuild the index")
  t = np.asarray(text_vec, np.float64).reshape(m, e)
  v = np.asarray(image_vecs, np.float64).reshape(-1, m, e)
  contrib = np.einsum("me,kme->km", t, v)
  w = np.asarray(layout.weights, np.float64)
  cos = np.where(w > 0, contrib * w.sum() / np.where(w > 0, w, 1.0), 0.0)
  return contrib, np.clip(cos, -1.0, 1.0)


def explanation(text_vec: np.ndarray, image_vecs: np.ndarray, layout: Layout) -> list[dict]:
  """Per image (JSON-ready): {"pieces": [{"name", "weight", "cosine", "contribution"}], "stripes": [{"rows",
  "cosine"}] (part models; stripe i ↔ piece part_i), "coarse_mean": mean coarse cosine (part models)}."""
  contrib, cos = split_scores(text_vec, image_vecs, layout)
  out = []
  for c_row, cos_row in zip(contrib, cos):
    item = {"pieces": [{"name": n, "weight": w, "cosine": round(float(c), 4), "contribution": round(float(x), 4)}
                       for n, w, c, x in zip(layout.names, layout.weights, cos_row, c_row)]}
    if layout.has_parts:
      p = len(layout.stripes)
      item["stripes"] = [{"rows": list(b), "cosine": round(float(c), 4)} for b, c in zip(layout.stripes, cos_row[-p:])]
      item["coarse_mean"] = round(float(np.mean(cos_row[1:-p])), 4) if len(layout.names) > p + 1 else None
    out.append(item)
  return out


def heat(x: np.ndarray) -> np.ndarray:
  """Values in [0, 1] [...] → uint8 RGB [..., 3] on a dark-blue → red → yellow ramp."""
  x = np.clip(x, 0, 1)[..., None]
  stops = np.asarray([[20, 20, 90], [200, 30, 30], [255, 230, 40]], np.float64)
  lo = stops[0] + (stops[1] - stops[0]) * np.clip(x * 2, 0, 1)
  hi = stops[1] + (stops[2] - stops[1]) * np.clip(x * 2 - 1, 0, 1)
  return np.where(x < 0.5, lo, hi).astype(np.uint8)


def overlay(image: Image.Image, foreground: np.ndarray, layout: Layout, stripe_cosines=None,
            height: int = 256, alpha: float = 0.45) -> Image.Image:
  """The image (resized to ``height``) with its foreground map [gh·gw] as a heat map, the P stripe boundaries and,
  when given, each stripe's cosine [P] written on it. → RGB image."""
  gh, gw = layout.grid
  w = max(1, round(image.width * height / image.height))
  base = image.convert("RGB").resize((w, height), Image.BILINEAR)
  fg = np.asarray(foreground, np.float64).reshape(gh, gw)
  fg = fg / fg.max() if fg.max() > 0 else fg
  heat_map = Image.fromarray(heat(fg)).resize((w, height), Image.NEAREST)
  out = Image.blend(base, heat_map, alpha)
  draw = ImageDraw.Draw(out)
  for i, (a, _) in enumerate(layout.stripes):
    y0 = round(a * height / gh)
    if a:
      draw.line([(0, y0), (w, y0)], fill=(255, 255, 255), width=1)
    if stripe_cosines is not None:
      label = f"{float(stripe_cosines[i]):+.2f}"
      draw.rectangle([1, y0 + 1, 1 + 6 * len(label) + 2, y0 + 12], fill=(0, 0, 0))
      draw.text((2, y0 + 1), label, fill=(255, 255, 255))
  return out
