"""Ground truth of a synthetic_pedes image, recomputed from the generator's seeds (no extra files): the rendered
person's mask, the image rows each body region occupies, and which caption words describe which region.

Every image ``cam{c}/{pid:05d}_{k:02d}`` was drawn with the Shot of ``default_rng([seed, 1, pid, k])`` (camera first,
then ``shots.sample_shot``) and the identity's attributes (attributes.json: "attributes" + "latent"), so both are
regenerated exactly. Regions: "head" (hair, hat, glasses), "upper" (the upper garment), "lower" (the lower garment)
and "shoes", as body-unit spans of the figure (8 units tall from the head top) mapped to image rows.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from PIL import Image

from tpsearch_jax.data.synthetic import captions as sc
from tpsearch_jax.data.synthetic import render as sr
from tpsearch_jax.data.synthetic import shots
from tpsearch_jax.data.synthetic.shots import Shot

REGIONS = ("head", "upper", "lower", "shoes")
_FILE = re.compile(r"cam\d+/(\d{5})_(\d{2})\.\w+$")
_MAGENTA = (255, 0, 255)  # no garment, skin or hair colour of the renderer comes near it


def read_meta(root: str) -> dict:
  """attributes.json of the dataset folder ``root``."""
  with open(os.path.join(root, "attributes.json"), encoding="utf-8") as f:
    return json.load(f)


def image_truth(meta: dict, file_path: str) -> tuple[dict, Shot]:
  """(render attributes incl. the latent "_skin"/"_inner", Shot) of the image ``file_path`` (relative to imgs/)."""
  m = _FILE.search(file_path)
  if m is None:
    raise ValueError(f"{file_path!r} is not a synthetic_pedes image name (cam<c>/<pid>_<k>.<ext>)")
  pid, k = int(m.group(1)), int(m.group(2))
  person = next(p for p in meta["identities"] if p["id"] == pid)
  attrs = dict(person["attributes"], _skin=person["latent"]["skin"], _inner=person["latent"]["inner"])
  rng = np.random.default_rng([int(meta["generator"]["seed"]), 1, pid, k])
  return attrs, shots.sample_shot(rng, camera=int(rng.integers(shots.NUM_CAMERAS)))


def person_mask(attrs: dict, shot: Shot, size_hw: tuple[int, int]) -> np.ndarray:
  """float32 [H, W] in [0, 1]: the share of each output pixel covered by the person (occluded parts excluded)."""
  rng = np.random.default_rng(shot.seed)
  pt = sr._Painter(size_hw, shot)  # pylint: disable=protected-access
  sr._background(pt, shot, rng)  # pylint: disable=protected-access  (advances rng as render() does)
  pt.draw.rectangle([0, 0, pt.w, pt.h], fill=_MAGENTA)
  sr._draw_person(pt, attrs, shot, rng)  # pylint: disable=protected-access
  x = np.asarray(pt.img, np.int32)
  shadow = np.asarray(sr._shade(_MAGENTA, 0.75))  # pylint: disable=protected-access  (the ground shadow)
  person = ~(np.all(x == _MAGENTA, axis=-1) | np.all(x == shadow, axis=-1))
  if shot.occluder == "low":
    person[int(pt.h * (1 - shot.occluder_extent)):] = False
  elif shot.occluder in ("left", "right"):
    width = int(pt.w * shot.occluder_extent)
    if shot.occluder == "left":
      person[:, :width] = False
    else:
      person[:, pt.w - width:] = False
  small = Image.fromarray(person.astype(np.uint8) * 255).resize((size_hw[1], size_hw[0]), Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255.0


def region_rows(attrs: dict, shot: Shot) -> np.ndarray:
  """float [len(REGIONS), 2]: (top, bottom) of each region as fractions of the image height, clipped to [0, 1]."""
  upper_end = 5.5 if attrs["upper.type"] == "coat" else 4.15
  lower = {"shorts": (3.8, 5.1), "skirt": (3.7, 5.85)}.get(attrs["lower.type"], (3.8, 7.7))
  units = {"head": (0.0, 1.25), "upper": (1.22, upper_end), "lower": lower, "shoes": (7.5, 8.0)}
  rows = np.array([units[r] for r in REGIONS], np.float64) * shot.scale / 8.0 + shot.top
  return np.clip(rows, 0.0, 1.0)


_NOUNS = {
    "head": {"hair", "cap", "beanie", "hat", "glasses", "spectacles", "sunglasses", "shades"},
    "upper": {"t-shirt", "tee", "shirt", "sweater", "jumper", "pullover", "jacket", "coat", "overcoat", "sleeves",
              "short-sleeved", "long-sleeved", "logo", "print", "stripes", "striped", "top", "upper", "above"},
    "lower": {"trousers", "pants", "slacks", "jeans", "shorts", "skirt", "bottoms", "lower", "below", "bottom"},
    "shoes": {"shoes", "sneakers", "trainers"},
}
_BREAK = {"and", "with", "wearing", "who", "is", "has", "wears", "also", "dressed", "in", "the", "person", "a", "an",
          "on", "at", "carries", "carrying", "this", "pedestrian", "someone", "individual"}
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|[.,]")


def word_regions(caption: str) -> list[tuple[str, int]]:
  """[(word, region index or -1)]: each phrase (words between breaks such as "and", "with", ",") that holds a
  region noun gives that region to its words; colour and other modifiers share their noun's region."""
  words = _WORD.findall(caption)
  out = [-1] * len(words)
  start = 0
  for i in range(len(words) + 1):
    if i == len(words) or words[i] in ".," or words[i].lower() in _BREAK:
      phrase = range(start, i)
      found = [r for r, name in enumerate(REGIONS) for j in phrase if words[j].lower() in _NOUNS[name]]
      if found:
        for j in phrase:
          out[j] = found[-1]
      start = i + 1
  return list(zip(words, out))


def caption_words_known(caption: str) -> bool:
  """Whether every colour word of ``caption`` lies in a phrase with a region (a check of ``word_regions``)."""
  colours = {w for v in sc.SYNONYMS["colour"].values() for w in v if " " not in w}
  return all(r >= 0 for w, r in word_regions(caption) if w.lower() in colours)
