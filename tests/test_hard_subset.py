"""The hard query subset of synthetic_pedes (data/synthetic/hard_subset.py) and the evaluator's subset rows."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import numpy_reference as ref
from tpsearch_jax import evaluate, sharding
from tpsearch_jax.data import annotations
from tpsearch_jax.data.synthetic import attributes as sa
from tpsearch_jax.data.synthetic import captions as sc
from tpsearch_jax.data.synthetic import generator, hard_subset

TEMPLATE = {"hair.length": "short", "hair.colour": "black", "hat.type": "none", "hat.colour": None,
            "glasses": "none", "upper.type": "t-shirt", "upper.colour": "white", "upper.sleeves": "short",
            "upper.pattern": "plain", "lower.type": "jeans", "lower.colour": "blue", "shoes.colour": "black",
            "bag.type": "none", "bag.colour": None}


def _person(pid, split="test", twin_of=None, differs_in=None, **changes):
  attrs = dict(TEMPLATE)
  attrs.update({k.replace("_", "."): v for k, v in changes.items()})
  return {"id": pid, "split": split, "attributes": attrs, "twin_of": twin_of, "differs_in": differs_in}


# 1/2: near-twins in test (upper colour); 3/4: skirts, 3 in rare purple with rare sunglasses; 5/6 (train) make red
# and blue uppers common; 7 (test) has its twin 8 in val (shoe colour).
PEOPLE = [
    _person(1, upper_colour="red"), _person(2, twin_of=1, differs_in="upper.colour", upper_colour="blue"),
    _person(3, lower_type="skirt", lower_colour="purple", glasses="sunglasses"),
    _person(4, lower_type="skirt", lower_colour="black"),
    _person(5, "train", upper_colour="red", shoes_colour="white"),
    _person(6, "train", upper_colour="blue", shoes_colour="white"),
    _person(7, hair_colour="brown"), _person(8, "val", twin_of=7, differs_in="shoes.colour", hair_colour="brown",
                                             shoes_colour="grey"),
    _person(9, upper_type="jacket", upper_sleeves="long"), _person(10, "train", upper_type="jacket"),
    _person(11, "train", upper_type="coat"), _person(12, "train", upper_type="coat"),
]
# (caption, pid, expected reasons), written by hand.
CASES = [
    ("A person wearing a red t-shirt and blue jeans.", 1, {"twin"}),  # the only words that tell 1 from 2
    ("A person wearing blue jeans and black shoes.", 1, set()),  # fits 1 and 2 alike: ambiguous, not "hard"
    ("The person wears a blue tee.", 2, {"twin"}),
    ("A person wearing a white t-shirt and a purple skirt.", 3, {"rare"}),  # without "purple", 4 fits as well
    ("Someone wearing a purple skirt, who wears sunglasses.", 3, set()),  # each rare fact alone singles 3 out
    ("A person with brown hair is wearing black sneakers.", 7, set()),  # the twin (8) is not in the test gallery
]


def test_caption_facts_of_hand_written_captions():
  cases = {
      "A pedestrian wearing a navy blue striped t-shirt with short sleeves and grey slacks.":
          {"upper.colour": "navy", "upper.pattern": "striped", "upper.type": "t-shirt", "upper.sleeves": "short",
           "lower.colour": "grey", "lower.type": "trousers"},
      "This person has shoulder-length ginger hair, wears dark glasses and carries nothing.":
          {"hair.length": "long", "hair.colour": "red", "glasses": "sunglasses", "bag.type": "none"},
      "Someone is dressed in a cream-coloured overcoat and brown trainers. The person has spectacles on.":
          {"upper.colour": "beige", "upper.type": "coat", "shoes.colour": "brown", "glasses": "glasses"},
      "The person wears a green knit hat and has a red shoulder bag at the side.":
          {"hat.colour": "green", "hat.type": "beanie", "bag.colour": "red", "bag.type": "handbag"},
      "A person with gray hair is wearing a black long-sleeved button-up shirt, a pink knee-length skirt.":
          {"hair.colour": "grey", "upper.colour": "black", "upper.sleeves": "long", "upper.type": "shirt",
           "lower.colour": "pink", "lower.type": "skirt"},
  }
  for caption, want in cases.items():
    assert hard_subset.caption_facts(caption) == want, caption


def test_generated_captions_state_only_true_facts():
  rng = np.random.default_rng(3)
  stated = 0
  for _ in range(300):
    a = sa.sample_identity(rng)
    visible = set(sa.PARTS) if rng.random() < 0.5 else {"upper", "lower", "shoes"}
    caption = sc.make_caption(a, visible, rng)
    facts = hard_subset.caption_facts(caption)
    assert {k: v for k, v in facts.items() if a[k] != v} == {}, caption
    assert facts.get("upper.colour") == a["upper.colour"] or "upper" not in caption_parts(caption), caption
    stated += len(facts)
  assert stated > 300 * 3


def caption_parts(caption: str) -> set[str]:
  """Which garments a caption names, from the grammar's noun table (an upper garment named means its colour is)."""
  words = caption.lower()
  return {"upper"} if any(s.lower() in words for forms in sc.SYNONYMS["upper.type"].values() for s in forms) else set()


def test_hard_reasons_match_the_hand_derivation():
  reasons = hard_subset.hard_reasons(PEOPLE, "test", [c for c, _, _ in CASES], [p for _, p, _ in CASES],
                                     rare_fraction=0.1)
  for (caption, _, want), got in zip(CASES, reasons):
    assert got == want, caption


def test_rare_needs_the_value_to_be_rare():
  # With purple as common as the other skirt colour (threshold below 1/12), the purple caption is not hard.
  reasons = hard_subset.hard_reasons(PEOPLE, "test", [CASES[3][0]], [3], rare_fraction=0.05)
  assert reasons == [set()]


def test_consistent_counts_and_oracle_match_the_hand_derivation(tmp_path):
  # Test identities 1, 2, 3, 4, 7, 9 (by hand): "red t-shirt, blue jeans" fits 1; "blue jeans, black shoes" fits
  # 1, 2, 7, 9 (3 and 4 wear skirts); "blue tee" fits 2; both purple-skirt captions fit 3; "brown hair, black
  # sneakers" fits 7 (its twin 8 is in val).
  captions = [c for c, _, _ in CASES]
  np.testing.assert_array_equal(hard_subset.consistent_counts(PEOPLE, "test", captions), [1, 4, 1, 1, 1, 1])
  records = [{"split": "test", "captions": captions[:2], "file_path": "a.jpg", "id": 1},
             {"split": "train", "captions": ["A person wearing a red t-shirt."], "file_path": "b.jpg", "id": 5}]
  (tmp_path / "attributes.json").write_text(json.dumps({"identities": PEOPLE}))
  (tmp_path / "reid_raw.json").write_text(json.dumps(records))
  got = hard_subset.attribute_oracle(str(tmp_path), "test")
  assert got["captions"] == 2
  np.testing.assert_allclose([got["R1"], got["unique"]], [100 * (1 + 1 / 4) / 2, 50.0])


def test_hard_queries_index_the_split_captions(tmp_path):
  generator.generate(str(tmp_path), num_ids=40, images_per_id=2, seed=1, image_size=(48, 16),
                     split_fractions=(0.5, 0.1, 0.4))
  ann = annotations.read_annotations("synthetic_pedes", str(tmp_path))
  split = ann.split("test")
  idx = hard_subset.hard_queries(str(tmp_path), split)
  with open(tmp_path / "attributes.json") as f:
    identities = json.load(f)["identities"]
  reasons = hard_subset.hard_reasons(identities, "test", split.captions, split.caption_pids)
  np.testing.assert_array_equal(idx, [i for i, r in enumerate(reasons) if r])
  assert 0 < len(idx) < len(split.captions)
  twins = {p["id"] for p in identities if p["split"] == "test" and p["twin_of"] is not None}
  twins |= {p["twin_of"] for p in identities if p["split"] == "test" and p["twin_of"] is not None}
  assert any(split.caption_pids[i] in twins for i in idx)


# ----------------------------------------------------------------------------- evaluator subset rows
_RNG = np.random.default_rng(0)
Q, G = 37, 12
SIM = _RNG.normal(size=(Q, G)).astype(np.float32)
GALLERY_PIDS = np.repeat(np.arange(6), 2).astype(np.int32)
QUERY_PIDS = _RNG.integers(0, 6, Q).astype(np.int32)
SUBSET = np.sort(_RNG.choice(Q, 13, replace=False))


class LookupModel(nn.Module):
  """q·g = SIM[q, g]: gallery index → one-hot, query index → row of SIM."""

  @nn.compact
  def __call__(self, x):
    return x

  def encode_images(self, index):
    return jax.nn.one_hot(index[:, 0], G, dtype=jnp.float32)

  def encode_texts(self, index):
    return jnp.asarray(SIM)[index[:, 0]]


def _batches(key, pids, batch_size):
  out = []
  for start in range(0, len(pids), batch_size):
    idx = np.arange(start, min(start + batch_size, len(pids)))
    pad = batch_size - len(idx)
    out.append({key: np.concatenate([idx, np.zeros(pad, np.int64)]).astype(np.int32)[:, None],
                "pids": np.concatenate([pids[idx], -np.ones(pad, np.int32)]).astype(np.int32),
                "valid": np.concatenate([np.ones(len(idx), bool), np.zeros(pad, bool)]),
                "index": np.concatenate([idx, -np.ones(pad, np.int64)])})
  return out


@pytest.mark.parametrize("num_devices", [1, 8])
def test_subset_row_equals_the_reference_on_the_sliced_similarity(num_devices):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  evaluator = evaluate.Evaluator(LookupModel(), mesh, params_sharding={}, block_size=4)
  mask = np.zeros(Q, bool)
  mask[SUBSET] = True
  row, subsets = evaluator.evaluate_with_subsets({}, _batches("images", GALLERY_PIDS, 8),
                                                 _batches("caption_ids", QUERY_PIDS, 8),
                                                 {"hard": SUBSET, "as_mask": mask})
  whole = ref.retrieval_full_sort(SIM, QUERY_PIDS, GALLERY_PIDS)
  sliced = ref.retrieval_full_sort(SIM[SUBSET], QUERY_PIDS[SUBSET], GALLERY_PIDS)
  assert abs(whole["R1"] - sliced["R1"]) > 1.0  # the subset's row is not the whole split's
  for k in evaluate.METRIC_KEYS:
    assert row[k] == pytest.approx(whole[k], abs=1e-4), k
    assert subsets["hard"][k] == pytest.approx(sliced[k], abs=1e-4), k
    assert subsets["as_mask"][k] == pytest.approx(sliced[k], abs=1e-4), k
  assert subsets["hard"]["num_queries"] == len(SUBSET) and subsets["hard"]["num_gallery"] == G


def test_evaluate_splits_adds_the_subset_row():
  evaluator = evaluate.Evaluator(LookupModel(), sharding.create_mesh(), params_sharding={})
  batches = lambda split: (_batches("images", GALLERY_PIDS, 8), _batches("caption_ids", QUERY_PIDS, 8))  # noqa
  rows = evaluate.evaluate_splits(evaluator, {}, batches, ["val", "test"], step=3, checkpoint="c",
                                  query_subsets={"test": {"hard": SUBSET}})
  assert list(rows) == ["val", "test", "test_hard"]
  assert rows["test_hard"]["num_queries"] == len(SUBSET) and rows["test_hard"]["step"] == 3
  with pytest.raises(ValueError, match="empty"):
    evaluator.evaluate_with_subsets({}, *batches("test"), {"none": np.zeros(0, np.int64)})
