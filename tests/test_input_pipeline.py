"""tf.data train/eval pipelines, samplers and MLM masking on tiny PIL-generated images."""

from __future__ import annotations

import collections
import io
import itertools

import dataset_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from tpsearch_jax.data.image_check import ImageDecodeError
from tpsearch_jax.data.pipeline.evaluation import eval_datasets
from tpsearch_jax.data.pipeline.image_ops import augment_params
from tpsearch_jax.data.pipeline.training import TrainPipeline, train_iterator
from tpsearch_jax.data import masking, samplers
from tpsearch_jax.models.clip import tokenizer

Rec = collections.namedtuple("Rec", "pid image_id image_path caption")
Split = collections.namedtuple("Split", "name image_pids image_paths caption_pids captions")
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
H, W = 32, 16
WORDS = "red blue black white coat jacket bag shoes jeans skirt hair man woman walking carrying".split()


def config(**overrides):
  """The base data config at the tests' image size; clean caption ids (tests identify captions by them)."""
  return fx.data_config(**{"image_size": (H, W), "caption_uses_mlm_ids": False, "num_parallel_calls": 2,
                           **overrides})


def caption(rng: np.random.Generator) -> str:
  return "a person with " + " ".join(rng.choice(WORDS, rng.integers(3, 12)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """12 images (JPEG, 40×20) of 6 identities, 2 captions each -> 24 records."""
  root, rng, records = tmp_path_factory.mktemp("imgs"), np.random.default_rng(0), []
  for i in range(12):
    path = str(root / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), np.uint8)).save(path, quality=90)
    records += [Rec(i // 2, i, path, caption(rng)) for _ in range(2)]
  return records


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ train stream


def test_train_batch_shapes_and_dtypes(data):
  batch = next(train_iterator(data, config(color_jitter=True), 8, seed=0))
  want = {"images": ((8, H, W, 3), np.float32), "caption_ids": ((8, 77), np.int32), "mlm_ids": ((8, 77), np.int32),
          "mlm_labels": ((8, 77), np.int32), "pids": ((8,), np.int32), "image_ids": ((8,), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == want
  assert np.isfinite(batch["images"]).all()


def test_same_seed_same_stream_and_resume_continues_it(data):
  cfg = config(caption_uses_mlm_ids=True)
  full = take(train_iterator(data, cfg, 8, seed=3), 7)  # 3 steps per epoch: crosses two epoch boundaries
  assert_batches_equal(full, take(train_iterator(data, cfg, 8, seed=3), 7))
  assert_batches_equal(full[4:], take(train_iterator(data, cfg, 8, seed=3, start_step=4), 3))
  other = next(train_iterator(data, cfg, 8, seed=4))
  assert not np.array_equal(other["images"], full[0]["images"])


def test_epochs_visit_each_example_once(data):
  by_id = {r.image_id: r for r in data}
  it = train_iterator(data, config(), 8, seed=1)
  assert it.steps_per_epoch == 3 and it.num_examples == 24
  batches = take(it, 6)
  for epoch in (batches[:3], batches[3:]):
    keys = [(i, tuple(c)) for b in epoch for i, c in zip(b["image_ids"], b["caption_ids"])]
    assert len(set(keys)) == 24
    for b in epoch:
      np.testing.assert_array_equal(b["pids"], [by_id[i].pid for i in b["image_ids"]])
  order = lambda ep: [(i, tuple(c)) for b in ep for i, c in zip(b["image_ids"], b["caption_ids"])]  # noqa: E731
  assert order(batches[:3]) != order(batches[3:])


def test_two_process_slices_concatenate_to_the_global_batch(data):
  cfg = config(color_jitter=True)
  whole = take(train_iterator(data, cfg, 8, seed=5), 4)
  parts = [take(train_iterator(data, cfg, 8, seed=5, process_index=p, process_count=2), 4) for p in (0, 1)]
  joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
  assert_batches_equal(whole, joined)


def test_caption_ids_are_the_clean_tokens_or_the_masked_ones(data):
  one_caption = data[::2]  # one record per image, so image_id names the record
  by_id = {r.image_id: r for r in one_caption}
  for uses_mlm in (False, True):
    b = next(train_iterator(one_caption, config(caption_uses_mlm_ids=uses_mlm), 4, seed=2))
    clean = tokenizer.tokenize([by_id[i].caption for i in b["image_ids"]])
    np.testing.assert_array_equal(b["caption_ids"], b["mlm_ids"] if uses_mlm else clean)
    sel = b["mlm_labels"] > 0
    np.testing.assert_array_equal(b["mlm_labels"][sel], clean[sel])
    np.testing.assert_array_equal(b["mlm_ids"][~sel], clean[~sel])
    assert (b["mlm_ids"] != clean).any()


def test_identity_sampler_pipeline_batches_are_k_per_identity(data):
  b = take(train_iterator(data, config(identity_sampler=True, num_instances=2), 8, seed=0), 3)
  for batch in b:
    pids = batch["pids"].reshape(4, 2)
    assert (pids[:, 0] == pids[:, 1]).all() and len(set(pids[:, 0])) == 4
  assert_batches_equal(b[1:], take(train_iterator(data, config(identity_sampler=True, num_instances=2), 8, seed=0,
                                                     start_step=1), 2))


# ------------------------------------------------------------------------------------------------ image ops


def write(path, array, fmt):
  Image.fromarray(array).save(path, format=fmt)
  return str(path)


def test_flip_pad_crop_semantics(tmp_path):
  """Each output equals normalise(crop_{i,j}(pad10(maybe_flip(x)))) for some offset in [0, 20]² (exact)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (H, W, 3), np.uint8)
  recs = [Rec(0, 0, write(tmp_path / "x.png", x, "PNG"), "a man")] * 32
  batch = next(train_iterator(recs, config(random_erasing=0.0), 32, seed=0))
  flips, offsets = [], set()
  for out in batch["images"]:
    found = None
    for flip, i, j in itertools.product((False, True), range(21), range(21)):
      src = np.pad((x[:, ::-1] if flip else x) / 255.0, ((10, 10), (10, 10), (0, 0)))[i:i + H, j:j + W]
      if np.allclose(out, (src - MEAN) / STD, atol=1e-5):
        found = (flip, i, j)
        break
    assert found is not None
    flips.append(found[0])
    offsets.add(found[1:])
  assert 4 <= sum(flips) <= 28 and len(offsets) >= 20


def test_eval_normalisation_matches_numpy(tmp_path):
  x = np.random.default_rng(1).integers(0, 256, (H, W, 3), np.uint8)
  split = Split("test", np.array([7]), [write(tmp_path / "x.png", x, "PNG")], np.array([7]), ["a man"])
  images, _ = eval_datasets(split, config(), 1)
  out = next(iter(images))["images"][0]
  np.testing.assert_allclose(out, (x / 255.0 - MEAN) / STD, atol=1e-5)


def test_resize_matches_pil_bilinear(tmp_path):
  """The reference resizes with PIL bilinear; the antialiased TF resize stays within one grey level of it."""
  rng = np.random.default_rng(2)
  src = np.asarray(Image.fromarray(rng.integers(0, 256, (25, 10, 3), np.uint8)).resize((40, 100), Image.BICUBIC))
  split = Split("test", np.array([0]), [write(tmp_path / "s.png", src, "PNG")], np.array([0]), ["x"])
  out = next(iter(eval_datasets(split, config(), 1)[0]))["images"][0]
  pil = np.asarray(Image.fromarray(src).resize((W, H), Image.BILINEAR)) / 255.0
  np.testing.assert_allclose(out * STD + MEAN, pil, atol=1.01 / 255)


def test_random_erasing_fills_a_rectangle_with_the_raw_mean(tmp_path):
  black = write(tmp_path / "k.png", np.zeros((H, W, 3), np.uint8), "PNG")
  recs = [Rec(0, 0, black, "a man")] * 64
  batch = next(train_iterator(recs, config(random_erasing=1.0), 64, seed=0))["images"]
  background = (0 - MEAN) / STD
  erased_counts = []
  for img in batch:
    erased = np.isclose(img, MEAN.astype(np.float32), atol=0, rtol=0).all(-1)
    assert np.isclose(img[~erased], background, atol=1e-5).all()
    rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
    if rows.size:
      assert erased[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one solid rectangle
    erased_counts.append(erased.sum())
  frac = np.array(erased_counts) / (H * W)
  assert (frac > 0).mean() > 0.9
  assert frac[frac > 0].min() >= 0.015 and frac.max() <= 0.45
  none = next(train_iterator(recs, config(random_erasing=0.0), 64, seed=0))["images"]
  assert not np.isclose(none, MEAN.astype(np.float32), atol=0, rtol=0).all(-1).any()


def test_erasing_parameters_follow_the_recipe_at_384x128():
  p = augment_params(0, 0, 4000, (384, 128), config(random_erasing=0.5))
  top, left, h, w = p["erase"].T
  on = h > 0
  assert abs(on.mean() - 0.5) < 0.04  # at 384×128 some of the 10 draws nearly always fits
  area, aspect = h[on] * w[on] / (384 * 128), h[on] / w[on]
  assert area.min() >= 0.019 and area.max() <= 0.41 and (area > 0.3).any() and (area < 0.05).any()
  assert aspect.min() >= 0.28 and aspect.max() <= 3.5 and (aspect < 1).mean() > 0.3 and (aspect > 1).mean() > 0.3
  assert (top[on] + h[on] <= 384).all() and (left[on] + w[on] <= 128).all() and (top >= 0).all()
  assert not p["erase"][~on].any()
  assert abs(p["flip"].mean() - 0.5) < 0.04 and p["crop"].min() == 0 and p["crop"].max() == 20


# ------------------------------------------------------------------------------------------------ eval


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_padding_keeps_every_example_exactly_once(data, process_count):
  paths = list(dict.fromkeys(r.image_path for r in data))[:11]
  split = Split("test", np.arange(11) + 100, paths, np.arange(13) + 200, [caption(np.random.default_rng(i))
                                                                           for i in range(13)])
  per = [eval_datasets(split, config(), 4, process_index=p, process_count=process_count)
         for p in range(process_count)]
  for kind, n, base in ((0, 11, 100), (1, 13, 200)):
    streams = [p[kind] for p in per]
    assert all(s.num_examples == n and len(s) == -(-n // 4) for s in streams)
    batches = [list(s) for s in streams]
    assert all(len(b) == -(-n // 4) for b in batches)
    pids = np.concatenate([np.concatenate([bt[k]["pids"] for bt in batches]) for k in range(len(batches[0]))])
    valid = np.concatenate([np.concatenate([bt[k]["valid"] for bt in batches]) for k in range(len(batches[0]))])
    np.testing.assert_array_equal(pids[valid], np.arange(n) + base)
    assert (pids[~valid] == -1).all() and (~valid).sum() == -(-n // 4) * 4 - n
  texts = np.concatenate([np.concatenate([b["caption_ids"] for b in p[1]]) for p in per])
  if process_count == 1:
    np.testing.assert_array_equal(texts[:13], tokenizer.tokenize(split.captions))
    assert (texts[13:] == 0).all()


# ------------------------------------------------------------------------------------------------ errors


def test_corrupt_file_is_named_at_build_time_or_skipped(data, tmp_path, caplog):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"this is not an image")
  recs = list(data) + [Rec(0, 99, str(bad), "a man")]
  with pytest.raises(ImageDecodeError, match="broken.jpg"):
    train_iterator(recs, config(), 8, seed=0)
  it = train_iterator(recs, config(skip_corrupt=True), 8, seed=0)
  assert it.num_examples == 24
  batches = take(it, 3)
  assert all(99 not in b["image_ids"] for b in batches)
  assert "skipping 1 examples" in caplog.text and "broken.jpg" in caplog.text


def test_epoch_length_counts_the_screened_examples_not_the_records(data, tmp_path, caplog):
  """8 of 32 records name a missing file: with skip_corrupt an epoch is 24 // 8 = 3 steps, not 32 // 8 = 4."""
  recs = list(data) + [Rec(6, 50 + i, str(tmp_path / f"gone{i % 2}.jpg"), f"a man {i}") for i in range(8)]
  pipeline = TrainPipeline(recs, config(skip_corrupt=True), 8, seed=0)
  assert (pipeline.steps_per_epoch, pipeline.num_examples, pipeline.num_skipped) == (3, 24, 8)
  assert "skipping 8 examples" in caplog.text and "gone0.jpg" in caplog.text
  batches = take(pipeline.iterator(), 4)  # one epoch covers every kept example once, then a new epoch begins
  keys = [(i, tuple(c)) for b in batches[:3] for i, c in zip(b["image_ids"], b["caption_ids"])]
  assert len(set(keys)) == 24 and all((b["image_ids"] < 50).all() for b in batches)
  it = train_iterator(recs, config(skip_corrupt=True), 8, seed=0)
  assert (it.steps_per_epoch, it.num_examples) == (3, 24)


def test_train_pipeline_screens_and_tokenizes_once(data, monkeypatch):
  calls = []
  tokenize = tokenizer.tokenize
  monkeypatch.setattr(tokenizer, "tokenize", lambda *a, **k: calls.append(1) or tokenize(*a, **k))
  pipeline = TrainPipeline(data, config(), 8, seed=7)
  first, resumed = take(pipeline.iterator(), 5), take(pipeline.iterator(start_step=2), 3)
  assert len(calls) == 1
  assert_batches_equal(first[2:], resumed)
  monkeypatch.setattr(tokenizer, "tokenize", tokenize)
  assert_batches_equal(first, take(train_iterator(data, config(), 8, seed=7), 5))


def test_incomplete_data_config_is_named(data):
  cfg = config()
  del cfg["verify_images"], cfg["num_threads"]
  with pytest.raises(ValueError, match="lacks field.*verify_images, num_threads"):
    TrainPipeline(data, cfg, 8, seed=0)
  split = Split("test", np.array([0]), [data[0].image_path], np.array([0]), ["a man"])
  with pytest.raises(ValueError, match="eval pipeline test.*lacks field.*verify_images"):
    eval_datasets(split, cfg, 1)
  with pytest.raises(KeyError, match="shuffle_buffer"):  # removed: the sampler, not a buffer, orders the examples
    config(shuffle_buffer=16)


def test_verify_images_false_skips_the_prescan(data, tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"this is not an image")
  recs = list(data) + [Rec(0, 99, str(bad), "a man")]
  pipeline = TrainPipeline(recs, config(verify_images=False), 25, seed=0)  # no scan: nothing raised or skipped
  assert (pipeline.num_examples, pipeline.num_skipped) == (25, 0)
  with pytest.raises(ImageDecodeError, match="broken.jpg"):  # named when the stream reaches it
    next(pipeline.iterator())


def test_truncated_jpeg_is_named_when_decoding_fails(tmp_path):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), np.uint8)).save(buf, "JPEG")
  (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  good = write(tmp_path / "ok.png", np.zeros((H, W, 3), np.uint8), "PNG")
  recs = [Rec(0, 0, good, "a man")] * 7 + [Rec(1, 1, str(tmp_path / "cut.jpg"), "a woman")]
  with pytest.raises(ImageDecodeError, match="cut.jpg"):  # the pre-scan decodes in full
    train_iterator(recs, config(), 8, seed=0)
  it = train_iterator(recs, config(verify_images=False), 8, seed=0)
  with pytest.raises(ImageDecodeError, match="cut.jpg"):  # without it, named when the stream reaches it
    next(it)
  assert len(take(train_iterator(recs[:-1] * 2, config(skip_corrupt=True), 8, seed=0), 1)) == 1


def test_missing_record_field_is_named(data):
  with pytest.raises(ValueError, match="record 1 has no field 'caption'"):
    train_iterator([data[0], {"pid": 0, "image_id": 0, "image_path": data[0].image_path}], config(), 1, seed=0)


# ------------------------------------------------------------------------------------------------ samplers


def test_random_sampler_epochs_are_truncated_permutations():
  s = samplers.RandomSampler(50, 8, seed=0)
  a, b = s.epoch_order(0), s.epoch_order(1)
  assert len(a) == 48 and len(set(a)) == 48 and set(a) <= set(range(50))
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, samplers.RandomSampler(50, 8, seed=0).epoch_order(0))


def test_identity_sampler_groups_and_coverage():
  pids = np.repeat(np.arange(12), [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5])
  s = samplers.IdentitySampler(pids, 8, 2, seed=0)
  for epoch in range(3):
    order = s.epoch_order(epoch)
    assert len(order) == (len(pids) // 8) * 8
    for batch in order.reshape(-1, 4, 2):
      assert (pids[batch[:, 0]] == pids[batch[:, 1]]).all() and len(set(pids[batch[:, 0]])) == 4
  assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))


# ------------------------------------------------------------------------------------------------ masking


def test_masking_rates_follow_the_recipe():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, tokenizer.MASK_ID, (4000, 77)).astype(np.int32)
  ids[:, 0], ids[:, 60], ids[:, 61:] = tokenizer.SOT_ID, tokenizer.EOT_ID, 0
  masked, labels = masking.mask_tokens(ids, np.random.default_rng(1))
  eligible = (ids > 0) & (ids < tokenizer.MASK_ID)
  sel = labels > 0
  assert not (sel & ~eligible).any()  # padding, SOT, EOT never selected
  np.testing.assert_array_equal(masked[~sel], ids[~sel])
  np.testing.assert_array_equal(labels[sel], ids[sel])
  n = eligible.sum()  # 4000 * 59 tokens
  assert abs(sel.sum() / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
  k = sel.sum()
  to_mask = (masked == tokenizer.MASK_ID) & sel
  changed_random = sel & (masked != ids) & ~to_mask
  for got, p in ((to_mask.sum(), 0.8), (changed_random.sum(), 0.1 * (1 - 1 / 49404))):
    assert abs(got / k - p) < 4 * np.sqrt(p * (1 - p) / k)
  assert masked[changed_random].min() >= 1 and masked[changed_random].max() <= tokenizer.MASK_ID - 1


def test_forced_mask_when_nothing_selected():
  """3 eligible tokens: P(only position 1 labelled and masked) = 0.85³ (forced) + 0.15·0.85²·0.8 (drawn)."""
  ids = np.zeros((20000, 8), np.int32)
  ids[:, 0], ids[:, 1:4], ids[:, 4] = tokenizer.SOT_ID, [11, 22, 33], tokenizer.EOT_ID
  masked, labels = masking.mask_tokens(ids, np.random.default_rng(2))
  assert ((labels > 0).sum(1) >= 1).all()
  only_first = ((labels > 0).sum(1) == 1) & (labels[:, 1] == 11) & (masked[:, 1] == tokenizer.MASK_ID)
  p = 0.85**3 + 0.15 * 0.85**2 * 0.8
  assert abs(only_first.mean() - p) < 4 * np.sqrt(p * (1 - p) / len(ids))
  assert (labels[:, 4:] == 0).all() and (labels[:, 0] == 0).all()
  empty = np.array([[tokenizer.SOT_ID, tokenizer.EOT_ID, 0, 0]], np.int32)
  m, lab = masking.mask_tokens(empty, np.random.default_rng(0))
  np.testing.assert_array_equal(m, [[tokenizer.SOT_ID, tokenizer.MASK_ID, 0, 0]])
  np.testing.assert_array_equal(lab, [[0, tokenizer.EOT_ID, 0, 0]])
