"""synthetic_pedes: captions agree with the attribute table, splits, twins, determinism, rendering, readability."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from tpsearch_jax.data import read_annotations
from tpsearch_jax.data.synthetic import attributes as sa
from tpsearch_jax.data.synthetic import render as sr
from tpsearch_jax.data.synthetic import shots
from tpsearch_jax.data.synthetic import ensure, generate, main
from tpsearch_jax.data.synthetic.captions import SYNONYMS

NUM_IDS, PER_ID = 40, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth") / "synthetic_pedes")
  generate(root, num_ids=NUM_IDS, images_per_id=PER_ID, seed=3)
  records = json.load(open(os.path.join(root, "reid_raw.json")))
  meta = json.load(open(os.path.join(root, "attributes.json")))
  return root, records, meta


# ---- caption checker built only from the synonym table -------------------------------------------------------------
def _alternation(phrases) -> str:
  return "|".join(re.escape(p.lower()) for p in sorted(set(phrases), key=len, reverse=True))


def _lookup(table: dict[str, list[str]]) -> dict[str, str]:
  return {syn.lower(): value for value, syns in table.items() for syn in syns}


COLOUR = _lookup(SYNONYMS["colour"])
HAIR_COLOUR = _lookup(SYNONYMS["hair.colour"])
HAIR_LENGTH = _lookup(SYNONYMS["hair.length"])
NOUNS = {}  # surface phrase -> (attribute key, value)
for key in ("upper.type", "lower.type", "hat.type", "glasses"):
  NOUNS.update({syn: (key, v) for syn, v in _lookup(SYNONYMS[key]).items()})
NOUNS.update({syn: ("bag.type", v) for syn, v in _lookup(SYNONYMS["bag.type"]).items() if v != "none"})
NOUNS.update({syn: ("shoes", "shoes") for syn in _lookup(SYNONYMS["shoes"])})
COLOUR_KEY = {"upper.type": "upper.colour", "lower.type": "lower.colour", "hat.type": "hat.colour",
              "bag.type": "bag.colour", "shoes": "shoes.colour"}
PART = {"upper.type": "upper", "lower.type": "lower", "hat.type": "hat", "glasses": "glasses", "bag.type": "bag",
        "shoes": "shoes"}
B = r"(?<![\w-])({})(?![\w-])"
NOUN_RE = re.compile(B.format(_alternation(NOUNS)))
COLOUR_RE = re.compile(B.format(_alternation(COLOUR)))
COLOUR_BEFORE_RE = re.compile(r"({})\s+(?:(?:plain|striped|short-sleeved|long-sleeved)\s+)*$".format(
    _alternation(COLOUR)))
HAIR_RE = re.compile(r"(?<![\w-])(?:({})\s+)?(?:({})\s+)?hair\b".format(_alternation(HAIR_LENGTH),
                                                                       _alternation(HAIR_COLOUR)))
SLEEVES = _lookup(SYNONYMS["upper.sleeves"])
PATTERN = {s: v for s, v in _lookup(SYNONYMS["upper.pattern"]).items() if v != "plain"} | {"striped": "striped"}
NO_BAG = [p.lower() for p in SYNONYMS["bag.type"]["none"]]


def check_caption(caption: str, attrs: dict, visible: set[str]) -> list[str]:
  """Every attribute the caption states, read through SYNONYMS, must be the identity's; returns the violations."""
  text, bad = caption.lower(), []
  hair_spans = []
  for m in HAIR_RE.finditer(text):
    hair_spans.append(m.span())
    if m.group(1) and HAIR_LENGTH[m.group(1)] != attrs["hair.length"]:
      bad.append(f"hair length {m.group(1)!r}")
    if m.group(2) and HAIR_COLOUR[m.group(2)] != attrs["hair.colour"]:
      bad.append(f"hair colour {m.group(2)!r}")
  for m in NOUN_RE.finditer(text):
    key, value = NOUNS[m.group(1)]
    if key != "shoes" and attrs[key] != value:
      bad.append(f"{m.group(1)!r}: identity has {key}={attrs[key]}")
    if PART[key] not in visible:
      bad.append(f"{m.group(1)!r} mentioned but {PART[key]} not visible")
    before = COLOUR_BEFORE_RE.search(text[:m.start()])
    if before and key in COLOUR_KEY and COLOUR[before.group(1)] != attrs[COLOUR_KEY[key]]:
      bad.append(f"{before.group(1)!r} {m.group(1)!r}: identity has {COLOUR_KEY[key]}={attrs[COLOUR_KEY[key]]}")
  own = {attrs[k] for k in COLOUR_KEY.values() if attrs[k]}
  for m in COLOUR_RE.finditer(text):
    if not any(a <= m.start() < b for a, b in hair_spans) and COLOUR[m.group(1)] not in own:
      bad.append(f"colour {m.group(1)!r} not worn")
  for phrase, value in SLEEVES.items():
    if phrase in text and attrs["upper.sleeves"] != value:
      bad.append(f"{phrase!r}: sleeves are {attrs['upper.sleeves']}")
  for phrase, value in PATTERN.items():
    if phrase in text and (attrs["upper.pattern"] != value or (value == "logo" and "logo" not in visible)):
      bad.append(f"{phrase!r}: pattern is {attrs['upper.pattern']}")
  if any(p in text for p in NO_BAG) and attrs["bag.type"] != "none":
    bad.append(f"says no bag but carries a {attrs['bag.type']}")
  return bad


def test_checker_catches_wrong_statements():
  a = {"hair.length": "short", "hair.colour": "black", "hat.type": "none", "hat.colour": None, "glasses": "none",
       "upper.type": "t-shirt", "upper.colour": "red", "upper.sleeves": "short", "upper.pattern": "plain",
       "lower.type": "jeans", "lower.colour": "blue", "shoes.colour": "white", "bag.type": "none", "bag.colour": None}
  vis = {"hair", "upper", "lower", "shoes", "bag", "glasses", "logo"}
  assert check_caption("A person wearing a red t-shirt with short sleeves and blue jeans.", a, vis) == []
  assert check_caption("A person wearing a blue t-shirt.", a, vis)  # wrong colour for the part
  assert check_caption("A person wearing a red shirt.", a, vis)  # wrong garment
  assert check_caption("The person has long black hair.", a, vis)
  assert check_caption("A person in red jeans and white sneakers.", a, vis)
  assert check_caption("Someone with sunglasses.", a, vis)
  assert check_caption("A red t-shirt with stripes.", a, vis)
  assert check_caption("White shoes.", a, vis - {"shoes"})
  assert check_caption("A person next to a green car.", a, vis)


def test_captions_state_only_the_identitys_visible_attributes(synth):
  _, records, meta = synth
  attrs = {p["id"]: p["attributes"] for p in meta["identities"]}
  problems = []
  for r in records:
    visible = set(meta["images"][r["file_path"]]["visible"])
    for c in r["captions"]:
      problems += [f"{r['file_path']}: {c} -> {b}" for b in check_caption(c, attrs[r["id"]], visible)]
  assert not problems, "\n".join(problems[:20])


def test_captions_vary_and_describe_several_parts(synth):
  _, records, _ = synth
  caps = [c for r in records for c in r["captions"]]
  assert all(2 <= len(r["captions"]) <= 3 for r in records)
  assert len(set(caps)) / len(caps) > 0.95
  garment_mentions = [len(NOUN_RE.findall(c.lower())) + len(HAIR_RE.findall(c.lower())) for c in caps]
  assert np.mean(garment_mentions) >= 2.5
  assert min(garment_mentions) >= 1


def test_splits_are_identity_disjoint_and_train_ids_contiguous(synth):
  _, records, meta = synth
  ids = collections.defaultdict(set)
  for r in records:
    ids[r["split"]].add(r["id"])
  assert set(ids) == {"train", "val", "test"}
  assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
  assert sorted(ids["train"]) == list(range(1, len(ids["train"]) + 1))
  assert sum(map(len, ids.values())) == NUM_IDS
  assert collections.Counter(r["id"] for r in records) == {i: PER_ID for i in range(1, NUM_IDS + 1)}
  split_of = {p["id"]: p["split"] for p in meta["identities"]}
  for p in meta["identities"]:
    if p["twin_of"] is not None:
      assert split_of[p["twin_of"]] == p["split"]  # the hard negative is in the same gallery / batch pool


def test_near_twins_differ_in_exactly_one_part(synth):
  _, _, meta = synth
  by_id = {p["id"]: p for p in meta["identities"]}
  twins = [p for p in meta["identities"] if p["twin_of"] is not None]
  assert len(twins) >= NUM_IDS // 5
  for p in twins:
    base = by_id[p["twin_of"]]["attributes"]
    parts = {k.split(".")[0] for k in sa.KEYS if p["attributes"][k] != base[k]}
    assert parts == {p["differs_in"].split(".")[0]}, (p, base)
  sigs = [tuple(p["attributes"][k] for k in sa.KEYS) for p in meta["identities"]]
  assert len(set(sigs)) == len(sigs)


def test_rendered_images_are_distinct(synth):
  root, records, _ = synth
  digests = set()
  for r in records:
    img = np.asarray(Image.open(os.path.join(root, "imgs", r["file_path"])))
    assert img.shape == (144, 48, 3)
    digests.add(hashlib.sha1(img.tobytes()).hexdigest())
  assert len(digests) == len(records)


def test_read_annotations_accepts_the_folder(synth):
  root, records, meta = synth
  ann = read_annotations("synthetic_pedes", root)
  train_ids = {p["id"] for p in meta["identities"] if p["split"] == "train"}
  assert ann.num_classes == len(train_ids)
  assert len(ann.train) == sum(len(r["captions"]) for r in records if r["split"] == "train")
  test = ann.split("test")
  assert len(test.image_paths) == PER_ID * sum(p["split"] == "test" for p in meta["identities"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  kw = dict(num_ids=5, images_per_id=2, image_size=(64, 32))
  generate(str(tmp_path / "a"), seed=7, **kw)
  generate(str(tmp_path / "b"), seed=7, **kw)
  generate(str(tmp_path / "c"), seed=8, **kw)

  def tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
      for f in files:
        p = os.path.join(dirpath, f)
        out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out

  a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
  assert a == b
  assert a["reid_raw.json"] != c["reid_raw.json"]


def test_existing_folder_needs_overwrite(tmp_path):
  root = str(tmp_path / "s")
  summary = main(["--out", root, "--num_ids", "4", "--images_per_id", "1", "--image_size", "64,32", "--format", "png"])
  assert sum(s["ids"] for s in summary["splits"].values()) == 4
  assert all(f.endswith(".png") for _, _, fs in os.walk(os.path.join(root, "imgs")) for f in fs)
  with pytest.raises(FileExistsError, match="--overwrite"):
    generate(root, num_ids=4, images_per_id=1)
  generate(root, num_ids=4, images_per_id=1, overwrite=True, image_size=(64, 32))


def test_split_assignment_keeps_every_split_populated():
  rng = np.random.default_rng(0)
  families = [0, 0, 1, 2, 2, 3, 4, 4]  # three twin pairs, two singletons
  out = sa.assign_splits(families, (0.8, 0.1, 0.1), rng)
  assert set(out) == {"train", "val", "test"}
  for f in set(families):
    assert len({out[i] for i, g in enumerate(families) if g == f}) == 1
  with pytest.raises(ValueError, match="summing to 1"):
    sa.assign_splits(families, (0.5, 0.1, 0.1), rng)


def test_attribute_frequencies_are_skewed():
  people = sa.sample_identities(1500, np.random.default_rng(1), twin_fraction=0.0)
  for key in ("upper.colour", "lower.colour", "shoes.colour"):
    counts = collections.Counter(p["attributes"][key] for p in people).most_common()
    assert counts[0][0] == "black"
    assert counts[0][1] >= 4 * counts[-1][1], (key, counts)


PLAIN_SHOT = shots.Shot(camera=1, view="front", scale=0.9, cx=0.5, top=0.05, arm_angles=(12.0, 12.0),
                        elbow_bends=(0.0, 0.0), leg_spread=4.0, lifted_foot=1, foot_lift=0.0, bag_side=1,
                        brightness=1.0, tint=(1.0, 1.0, 1.0), gradient=0.0, blur=0.0, noise=0.0, occluder=None,
                        occluder_extent=0.0, quality=95, colour_jitter=0, seed=0)


@pytest.mark.parametrize("upper,lower", [("red", "black"), ("yellow", "navy"), ("green", "beige"), ("white", "grey")])
def test_renderer_paints_the_named_colours(upper, lower):
  a = {"hair.length": "short", "hair.colour": "black", "hat.type": "none", "hat.colour": None, "glasses": "none",
       "upper.type": "t-shirt", "upper.colour": upper, "upper.sleeves": "short", "upper.pattern": "plain",
       "lower.type": "trousers", "lower.colour": lower, "shoes.colour": "white", "bag.type": "none",
       "bag.colour": None, "_skin": 0, "_inner": "white"}
  img = np.asarray(sr.render(a, PLAIN_SHOT, (144, 48)), np.float64)

  def share(rows, cols, name):
    dist = np.linalg.norm(img[rows, cols] - np.asarray(sr.RGB[name], np.float64), axis=-1)
    return float(np.mean(dist < 30))

  torso = (slice(int(0.25 * 144), int(0.45 * 144)), slice(18, 30))  # chest band, body centre
  legs = (slice(int(0.6 * 144), int(0.8 * 144)), slice(14, 34))
  assert share(*torso, upper) > 0.8
  assert share(*legs, lower) > 0.25  # two legs with background between them


def test_twin_edit_changes_only_its_part_of_the_image():
  rng = np.random.default_rng(5)
  base = sa.sample_identity(rng)
  base.update({"shoes.colour": "black", "bag.type": "none", "bag.colour": None, "hat.type": "none",
               "hat.colour": None})
  twin = {**base, "shoes.colour": "red"}
  shot = dataclasses.replace(PLAIN_SHOT, camera=2)
  x = np.asarray(sr.render(base, shot, (144, 48)), np.int64)
  y = np.asarray(sr.render(twin, shot, (144, 48)), np.int64)
  changed_rows = np.flatnonzero(np.abs(x - y).max(axis=(1, 2)) > 8)
  assert changed_rows.size > 0
  assert changed_rows.min() >= int(0.85 * 144)  # feet only


def test_ensure_generates_once_and_refuses_other_arguments(tmp_path):
  root = str(tmp_path / "s")
  kw = dict(num_ids=4, images_per_id=1, image_size=(64, 32))
  assert ensure(root, **kw)["num_ids"] == 4
  stamp = os.path.getmtime(os.path.join(root, "reid_raw.json"))
  ensure(root, **kw)  # same arguments: reused
  assert os.path.getmtime(os.path.join(root, "reid_raw.json")) == stamp
  with pytest.raises(ValueError, match="'num_ids': \\(4, 5\\)"):
    ensure(root, num_ids=5, images_per_id=1, image_size=(64, 32))
  with pytest.raises(TypeError, match="num_images"):
    ensure(root, num_images=3)
