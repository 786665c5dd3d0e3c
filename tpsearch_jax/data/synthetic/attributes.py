"""Attribute schema of synthetic_pedes identities: values, skewed frequencies, near-twins and identity-disjoint splits.

An identity is a flat dict ``{"part.attribute": value}`` (``None`` where the part is absent, e.g. the colour of a hat
that is not worn). Frequencies are deliberately skewed — black trousers are everywhere, purple ones are rare — so a
part's evidence for identity depends on how common it is. A *near-twin* copies another identity and changes exactly one
part, which makes fine-grained part-level differences necessary for retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Identity = dict[str, Any]

# name: (weight, ...) tables; weights need not sum to 1.
GARMENT_COLOURS = {
    "black": 22, "white": 15, "grey": 12, "blue": 10, "navy": 8, "red": 8, "green": 5, "yellow": 4, "pink": 4,
    "purple": 3, "orange": 3, "brown": 3, "beige": 3,
}
LOWER_COLOURS = {
    "black": 32, "grey": 15, "navy": 10, "beige": 10, "brown": 8, "blue": 7, "white": 6, "green": 4, "red": 3,
    "pink": 3, "purple": 2,
}
JEANS_COLOURS = {"blue": 50, "navy": 20, "black": 20, "grey": 7, "white": 3}
SHOE_COLOURS = {"black": 38, "white": 30, "brown": 12, "grey": 8, "red": 4, "blue": 4, "pink": 2, "yellow": 2}
BAG_COLOURS = {"black": 45, "brown": 15, "grey": 10, "blue": 8, "red": 8, "beige": 6, "pink": 4, "green": 4}
HAT_COLOURS = {"black": 35, "white": 15, "red": 12, "blue": 12, "grey": 10, "green": 8, "yellow": 8}
HAIR_COLOURS = {"black": 50, "brown": 28, "blonde": 10, "grey": 7, "red": 5}
HAIR_LENGTHS = {"short": 60, "long": 40}
HAT_TYPES = {"none": 80, "cap": 13, "beanie": 7}
GLASSES = {"none": 85, "glasses": 10, "sunglasses": 5}
UPPER_TYPES = {"t-shirt": 32, "jacket": 24, "shirt": 16, "sweater": 14, "coat": 14}
SHORT_SLEEVE_PROB = {"t-shirt": 0.8, "shirt": 0.4}  # other upper garments always have long sleeves
PATTERNS = {"plain": 72, "striped": 18, "logo": 10}
OUTER_PATTERNS = {"plain": 85, "striped": 15}  # jackets and coats carry no chest logo
LOWER_TYPES = {"trousers": 34, "jeans": 34, "shorts": 16, "skirt": 16}
BAG_TYPES = {"none": 45, "backpack": 33, "handbag": 22}

KEYS = ("hair.length", "hair.colour", "hat.type", "hat.colour", "glasses", "upper.type", "upper.colour",
        "upper.sleeves", "upper.pattern", "lower.type", "lower.colour", "shoes.colour", "bag.type", "bag.colour")
PARTS = ("hair", "hat", "glasses", "upper", "lower", "shoes", "bag")
# Latent appearance (rendered, never captioned), like skin tone or the top under an open jacket in real photos.
SKIN_TONES = 6
INNER_COLOURS = ("white", "grey", "black")


def part_of(key: str) -> str:
  """"upper.colour" -> "upper"."""
  return key.split(".", 1)[0]


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
  names = list(table)
  p = np.asarray([table[n] for n in names], np.float64)
  return names[rng.choice(len(names), p=p / p.sum())]


def _lower_colours(lower_type: str) -> dict[str, float]:
  return JEANS_COLOURS if lower_type == "jeans" else LOWER_COLOURS


def sample_identity(rng: np.random.Generator) -> Identity:
  """One identity's captionable attributes (KEYS) plus latent render-only fields (``_skin``, ``_inner``)."""
  a: Identity = {}
  a["hair.length"] = _pick(rng, HAIR_LENGTHS)
  a["hair.colour"] = _pick(rng, HAIR_COLOURS)
  a["hat.type"] = _pick(rng, HAT_TYPES)
  a["hat.colour"] = None if a["hat.type"] == "none" else _pick(rng, HAT_COLOURS)
  a["glasses"] = _pick(rng, GLASSES)
  a["upper.type"] = _pick(rng, UPPER_TYPES)
  a["upper.colour"] = _pick(rng, GARMENT_COLOURS)
  a["upper.sleeves"] = "short" if rng.random() < SHORT_SLEEVE_PROB.get(a["upper.type"], 0.0) else "long"
  a["upper.pattern"] = _pick(rng, OUTER_PATTERNS if a["upper.type"] in ("jacket", "coat") else PATTERNS)
  a["lower.type"] = _pick(rng, LOWER_TYPES)
  a["lower.colour"] = _pick(rng, _lower_colours(a["lower.type"]))
  a["shoes.colour"] = _pick(rng, SHOE_COLOURS)
  a["bag.type"] = _pick(rng, BAG_TYPES)
  a["bag.colour"] = None if a["bag.type"] == "none" else _pick(rng, BAG_COLOURS)
  a["_skin"] = int(rng.integers(SKIN_TONES))
  a["_inner"] = INNER_COLOURS[int(rng.integers(len(INNER_COLOURS)))]
  return a


def signature(a: Identity) -> tuple:
  """The captionable attributes as a hashable tuple (two identities must never share one)."""
  return tuple(a[k] for k in KEYS)


# Single-part edits that turn an identity into its near-twin; each returns None when it does not apply.
def _recolour(key: str, table_fn):
  def edit(a: Identity, rng: np.random.Generator) -> Identity | None:
    if a[key] is None:
      return None
    choices = {c: w for c, w in table_fn(a).items() if c != a[key]}
    return {**a, key: _pick(rng, choices)}
  return edit


def _toggle_sleeves(a: Identity, rng: np.random.Generator) -> Identity | None:
  if a["upper.type"] not in SHORT_SLEEVE_PROB:
    return None
  return {**a, "upper.sleeves": "long" if a["upper.sleeves"] == "short" else "short"}


def _swap_pattern(a: Identity, rng: np.random.Generator) -> Identity | None:
  table = OUTER_PATTERNS if a["upper.type"] in ("jacket", "coat") else PATTERNS
  return {**a, "upper.pattern": _pick(rng, {p: w for p, w in table.items() if p != a["upper.pattern"]})}


def _swap_lower_type(a: Identity, rng: np.random.Generator) -> Identity | None:
  choices = {t: w for t, w in LOWER_TYPES.items() if t != a["lower.type"]}
  new = _pick(rng, choices)
  if a["lower.colour"] not in _lower_colours(new):
    return None
  return {**a, "lower.type": new}


def _swap_hair_length(a: Identity, rng: np.random.Generator) -> Identity | None:
  return {**a, "hair.length": "long" if a["hair.length"] == "short" else "short"}


def _toggle_item(kind: str, types: dict[str, float], colours: dict[str, float]):
  def edit(a: Identity, rng: np.random.Generator) -> Identity | None:
    if a[f"{kind}.type"] == "none":
      return {**a, f"{kind}.type": _pick(rng, {t: w for t, w in types.items() if t != "none"}),
              f"{kind}.colour": _pick(rng, colours)}
    return {**a, f"{kind}.type": "none", f"{kind}.colour": None}
  return edit


def _swap_glasses(a: Identity, rng: np.random.Generator) -> Identity | None:
  return {**a, "glasses": _pick(rng, {g: w for g, w in GLASSES.items() if g != a["glasses"]})}


TWIN_EDITS = {  # name -> (weight, edit)
    "upper.colour": (5, _recolour("upper.colour", lambda a: GARMENT_COLOURS)),
    "lower.colour": (4, _recolour("lower.colour", lambda a: _lower_colours(a["lower.type"]))),
    "shoes.colour": (3, _recolour("shoes.colour", lambda a: SHOE_COLOURS)),
    "bag.colour": (2, _recolour("bag.colour", lambda a: BAG_COLOURS)),
    "bag.type": (3, _toggle_item("bag", BAG_TYPES, BAG_COLOURS)),
    "hair.colour": (2, _recolour("hair.colour", lambda a: HAIR_COLOURS)),
    "hair.length": (2, _swap_hair_length),
    "upper.sleeves": (2, _toggle_sleeves),
    "upper.pattern": (2, _swap_pattern),
    "lower.type": (2, _swap_lower_type),
    "hat.type": (1, _toggle_item("hat", HAT_TYPES, HAT_COLOURS)),
    "glasses": (1, _swap_glasses),
}


def make_twin(base: Identity, rng: np.random.Generator, taken: set[tuple]) -> tuple[Identity, str] | None:
  """A copy of ``base`` differing in exactly one part; returns (twin, edited key) or None if every try collides."""
  names = list(TWIN_EDITS)
  w = np.asarray([TWIN_EDITS[n][0] for n in names], np.float64)
  for _ in range(20):
    name = names[rng.choice(len(names), p=w / w.sum())]
    twin = TWIN_EDITS[name][1](base, rng)
    if twin is not None and signature(twin) not in taken:
      return twin, name
  return None


def sample_identities(num_ids: int, rng: np.random.Generator, twin_fraction: float) -> list[dict[str, Any]]:
  """``num_ids`` distinct identities, ~``twin_fraction`` of them near-twins of another identity.

  Returns a list of {"attributes", "family" (index shared by a twin pair), "twin_of" (list index or None),
  "differs_in" (attribute key or None)}.
  """
  out: list[dict[str, Any]] = []
  taken: set[tuple] = set()
  num_twins = int(round(num_ids * twin_fraction))
  while len(out) < num_ids - num_twins:
    a = sample_identity(rng)
    if signature(a) not in taken:
      taken.add(signature(a))
      out.append({"attributes": a, "family": len(out), "twin_of": None, "differs_in": None})
  bases = rng.permutation(len(out))
  for b in bases:
    if len(out) >= num_ids:
      break
    made = make_twin(out[b]["attributes"], rng, taken)
    if made is None:
      continue
    twin, key = made
    taken.add(signature(twin))
    out.append({"attributes": twin, "family": out[b]["family"], "twin_of": int(b), "differs_in": key})
  while len(out) < num_ids:  # only when twins kept colliding: fill with fresh identities
    a = sample_identity(rng)
    if signature(a) not in taken:
      taken.add(signature(a))
      out.append({"attributes": a, "family": len(out), "twin_of": None, "differs_in": None})
  return out


def assign_splits(families: Sequence[int], fractions: Sequence[float], rng: np.random.Generator) -> list[str]:
  """Split name per identity (identity-disjoint; twin families stay together); sizes follow (train, val, test).

  Every split with a positive fraction gets at least one identity; test and val are filled first, exactly where the
  family sizes allow, and train takes the rest.
  """
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0) or fractions[0] <= 0:
    raise ValueError(f"split_fractions must be three non-negative numbers (train > 0) summing to 1, got "
                     f"{tuple(fractions)}")
  n = len(families)
  members: dict[int, list[int]] = {}
  for i, f in enumerate(families):
    members.setdefault(int(f), []).append(i)
  order = [int(f) for f in rng.permutation(sorted(members))]
  out = ["train"] * n
  for split, frac in (("test", fractions[2]), ("val", fractions[1])):
    need = max(1, int(round(frac * n))) if frac > 0 else 0
    empty = True
    for f in list(order):
      if need <= 0:
        break
      if len(members[f]) <= need or empty:  # an empty split takes a family even if it overshoots
        for i in members[f]:
          out[i] = split
        need -= len(members[f])
        empty = False
        order.remove(f)
  if not order:
    raise ValueError(f"{n} identities are too few for split_fractions {tuple(fractions)}: train would be empty")
  return out
