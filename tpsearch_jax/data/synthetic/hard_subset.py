"""The hard query subset of a synthetic_pedes split: captions that single the person out only through a part that a
near-twin does not share, or through a rare attribute.

``caption_facts`` reads the attribute values a caption states ("red t-shirt" → upper.colour red, upper.type t-shirt)
with patterns built from ``captions.SYNONYMS`` (the grammar's complete surface table), not from the grammar itself.
A query of identity i is hard when

* **twin**: i's near-twin (the ``twin_of`` link, either direction) is in the same split, so also in the gallery, and
  the caption states i's value of the attribute they differ in (``differs_in``) — the only words that tell them
  apart; or
* **rare**: the caption states a value held by at most ``rare_fraction`` of all identities (over the identities
  that have the part, for colours), and that fact is decisive: without it, another identity of the split would fit
  every remaining stated fact.

``hard_queries(root, split)`` gives the indices over ``split.captions`` (the evaluator's query order), and
``attribute_oracle(root, split)`` the R1 ceiling that the captions allow: an oracle that knows every identity's
attributes and ranks the identities that fit a caption's stated facts at random.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tpsearch_jax.data.synthetic.captions import SYNONYMS

RARE_FRACTION = 0.05

_MODIFIERS = r"(?:(?:plain|striped|short-sleeved|long-sleeved)\s+)*"


def _alternation(surface_to_value: Mapping[str, str]) -> str:
  """Surface forms, longest first (so "navy blue" wins over "navy"), as a regex alternation."""
  return "|".join(re.escape(s) for s in sorted(surface_to_value, key=len, reverse=True))


def _inverse(key: str) -> dict[str, str]:
  return {s.lower(): value for value, forms in SYNONYMS[key].items() for s in forms}


_COLOURS = _inverse("colour")
_HAIR_COLOURS = _inverse("hair.colour")
_NOUNS = {key: _inverse(key) for key in ("upper.type", "lower.type", "hat.type", "glasses")}
_NOUNS["shoes"] = _inverse("shoes")
_NOUNS["bag.type"] = {s: v for s, v in _inverse("bag.type").items() if v != "none"}
_NO_BAG = [s.lower() for s in SYNONYMS["bag.type"]["none"]]
_PATTERNS = {s.lower(): v for v, forms in SYNONYMS["upper.pattern"].items() for s in forms}


def _coloured(part_nouns: str, text: str):
  """(colour surface, noun surface) of every "<colour> [modifiers] <noun>" phrase in ``text``."""
  pattern = rf"\b({_alternation(_COLOURS)})\s+{_MODIFIERS}({part_nouns})\b"
  return re.findall(pattern, text)


def caption_facts(caption: str) -> dict[str, str]:
  """Caption text → {attribute key: value} it states (keys of ``attributes.KEYS``; bag.type "none" when it says the
  person carries no bag)."""
  text = " " + caption.lower() + " "
  facts: dict[str, str] = {}
  for key, colour_key in (("upper.type", "upper.colour"), ("lower.type", "lower.colour"), ("shoes", "shoes.colour"),
                          ("bag.type", "bag.colour"), ("hat.type", "hat.colour")):
    nouns = _NOUNS[key]
    found = re.findall(rf"\b({_alternation(nouns)})\b", text)
    if found and key != "shoes":
      facts[key] = nouns[found[0]]
    for colour, _ in _coloured(_alternation(nouns), text):
      facts[colour_key] = _COLOURS[colour]
  if any(phrase in text for phrase in _NO_BAG):
    facts["bag.type"] = "none"
  glasses = re.findall(rf"\b({_alternation(_NOUNS['glasses'])})\b", text)
  if glasses:
    facts["glasses"] = _NOUNS["glasses"][glasses[0]]
  m = re.search(r"\b(short|long|shoulder-length)?\s*(" + _alternation(_HAIR_COLOURS) + r")?\s*hair\b", text)
  if m:
    if m.group(1):
      facts["hair.length"] = "long" if m.group(1) == "shoulder-length" else m.group(1)
    if m.group(2):
      facts["hair.colour"] = _HAIR_COLOURS[m.group(2)]
  sleeves = re.search(r"\b(short|long)(?:-sleeved| sleeves)\b", text)
  if sleeves:
    facts["upper.sleeves"] = sleeves.group(1)
  pattern = re.search(rf"\b({_alternation(_PATTERNS)})\b", text)
  if pattern:
    facts["upper.pattern"] = _PATTERNS[pattern.group(1)]
  return facts


def value_frequencies(identities: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
  """{(key, value): share of the identities with that value among those where the key is set (not None)}."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for p in identities:
    for k, v in p["attributes"].items():
      if v is not None:
        counts[k][v] += 1
  return {(k, v): n / sum(c.values()) for k, c in counts.items() for v, n in c.items()}


def _fits(attributes: Mapping[str, Any], facts: Mapping[str, str]) -> bool:
  return all(attributes.get(k) == v for k, v in facts.items())


def hard_reasons(identities: Sequence[Mapping[str, Any]], split: str, captions: Sequence[str],
                 caption_ids: Sequence[int], rare_fraction: float = RARE_FRACTION) -> list[set[str]]:
  """Per caption of ``split`` (its identity's raw id in ``caption_ids``): the subset of {"twin", "rare"} it is hard
  for (empty: not hard). ``identities``: attributes.json's "identities" list."""
  by_id = {int(p["id"]): p for p in identities}
  in_split = [p for p in identities if p["split"] == split]
  twin_of: dict[int, set[int]] = collections.defaultdict(set)
  for p in identities:
    if p["twin_of"] is not None:
      twin_of[int(p["id"])].add(int(p["twin_of"]))
      twin_of[int(p["twin_of"])].add(int(p["id"]))
  freq = value_frequencies(identities)
  out = []
  for caption, pid in zip(captions, caption_ids):
    me = by_id[int(pid)]
    facts = caption_facts(caption)
    reasons = set()
    for other in twin_of[int(pid)]:
      twin = by_id[other]
      key = twin["differs_in"] if twin["twin_of"] == int(pid) else me["differs_in"]
      if twin["split"] == split and key in facts and facts[key] == me["attributes"][key]:
        reasons.add("twin")
    for key, value in facts.items():
      if freq.get((key, value), 1.0) > rare_fraction or me["attributes"].get(key) != value:
        continue
      rest = {k: v for k, v in facts.items() if k != key}
      if any(p is not me and _fits(p["attributes"], rest) for p in in_split):
        reasons.add("rare")
    out.append(reasons)
  return out


def hard_queries(root: str, split) -> np.ndarray:
  """Dataset folder + ``annotations.EvalSplit`` → int64 [n_hard] indices into ``split.captions`` (sorted)."""
  reasons = hard_reasons(read_identities(root), split.name, split.captions, split.caption_pids)
  return np.asarray([i for i, r in enumerate(reasons) if r], np.int64)


def fit_matrix(identities: Sequence[Mapping[str, Any]], captions: Sequence[str]) -> np.ndarray:
  """identities (attributes.json entries) + captions → bool [len(captions), len(identities)]: identity j has every
  attribute value that caption i states (each caption parsed once)."""
  facts = [caption_facts(c) for c in captions]
  return np.asarray([[_fits(p["attributes"], f) for p in identities] for f in facts], bool).reshape(
      len(captions), len(identities))


def consistent_counts(identities: Sequence[Mapping[str, Any]], split: str, captions: Sequence[str]) -> np.ndarray:
  """int64 [n_captions]: how many identities of ``split`` fit every fact the caption states (``caption_facts``)."""
  in_split = [p for p in identities if p["split"] == split]
  return fit_matrix(in_split, captions).sum(axis=1).astype(np.int64)


def attribute_oracle(root: str, split: str) -> dict[str, float]:
  """Dataset folder + split name → {"R1": expected R1 (%) of the attribute oracle, "unique": % of captions that fit
  one identity only, "captions": n}. The oracle ranks the m identities that fit a caption first, in random order, so
  its expected R1 is 1/m per caption (images of one identity are interchangeable to it)."""
  with open(os.path.join(root, "reid_raw.json"), encoding="utf-8") as f:
    captions = [c for r in json.load(f) if r["split"] == split for c in r["captions"]]
  m = consistent_counts(read_identities(root), split, captions)
  return {"R1": oracle_r1(m), "unique": float(100 * np.mean(m == 1)), "captions": len(captions)}


def oracle_r1(counts: np.ndarray) -> float:
  """int [n_captions] identities fitting each caption → the oracle's expected R1 (%): the mean of 1/m (m ≥ 1)."""
  return float(100 * np.mean(1.0 / np.maximum(counts, 1)))


def read_identities(root: str) -> list[dict[str, Any]]:
  """attributes.json's "identities" list of the dataset folder ``root``."""
  with open(os.path.join(root, "attributes.json"), encoding="utf-8") as f:
    return json.load(f)["identities"]
