"""Whole queries, why-this-match and split search on the session's tiny trained run: `--split` indexing with
`--queries=split` gives the run's own test metrics; the API reports read/dropped words, phrase drops and occlusion
maps that equal independently computed score differences; the sentence modes combine as documented; occlusion
of a synthetic person's described garment drops a colour scorer's score more than the background does."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import threading
import urllib.parse
import urllib.request
from unittest import mock

import numpy as np
import pytest
from absl import flags
from PIL import Image

import search_fixtures
from tpsearch_jax.data.synthetic import attributes as synthetic_attributes
from tpsearch_jax.data.synthetic import render as synthetic_render
from tpsearch_jax.data.synthetic import shots as synthetic_shots
from tpsearch_jax.search import ann, attribution, cli, encoding, index_files, indexing, split
from tpsearch_jax.search.index_files import BadIndex
from tpsearch_jax.search.searcher import Searcher
from tpsearch_jax.search.server import SearchServer

FLAGS = flags.FLAGS
PADDING = " She also wears bright pink shoes and a yellow coat. She carries a green umbrella and a red bag."


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
  """The tiny run, its test split indexed with `index --dataset_root --split=test`, and that index loaded."""
  run = search_fixtures.trained_run(tmp_path_factory)
  index = str(tmp_path_factory.mktemp("split") / "index")
  try:
    FLAGS(["search", f"--workdir={run['workdir']}", f"--dataset_root={run['data']}", "--split=test",
           f"--index={index}", "--batch_size=16"])
    assert cli.main(["search", "index"]) == 0
  finally:
    FLAGS.unparse_flags()
  return {"run": run, "index": index, "searcher": Searcher(index, warm=False)}


def test_split_index_holds_exactly_the_split_and_scores_like_eval(test_split, tmp_path, capsys):
  run, index = test_split["run"], test_split["index"]
  want_paths = sorted(os.path.join(run["imgs"], r["file_path"]) for r in run["records"] if r["split"] == "test")
  assert test_split["searcher"].paths == want_paths
  assert index_files.read_meta(index)["dataset"] == {"name": "synthetic_pedes", "root": run["data"], "split": "test"}
  out = tmp_path / "metrics.json"
  try:
    FLAGS(["search", f"--index={index}", "--queries=split", f"--json={out}"])
    assert cli.main(["search", "query"]) == 0
  finally:
    FLAGS.unparse_flags()
  got = json.loads(out.read_text())
  with open(os.path.join(run["workdir"], "results.json")) as f:  # the run's final evaluation of its best checkpoint
    want = json.load(f)["splits"]["test"]
  assert got["num_queries"] == want["num_queries"] and got["num_images"] == want["num_gallery"]
  for key in ("R1", "R5", "R10", "mAP"):
    assert got[key] == pytest.approx(want[key], abs=1e-4), key
  assert f"R1 {want['R1']:.2f}" in capsys.readouterr().out


def test_queries_split_needs_a_split_index(test_split, tmp_path):
  meta = dict(index_files.read_meta(test_split["index"]))
  meta.pop("dataset")
  with pytest.raises(Exception, match="needs an index built from a dataset split"):
    split.split_of_index(meta)


@pytest.fixture(scope="module")
def served(test_split):
  server = SearchServer(test_split["searcher"], port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def fetch(server, path: str) -> bytes:
  with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=60) as resp:
    return resp.read()


def test_api_reports_dropped_words_and_phrase_drops(test_split, served):
  searcher = test_split["searcher"]
  caption = test_split["run"]["records"][0]["captions"][0]
  query = caption + PADDING
  data = json.loads(fetch(served, "/api/search?" + urllib.parse.urlencode({"q": query, "k": 3})))
  ids = searcher.tokenize([query], 4 * len(query))
  assert data["tokens"] == np.count_nonzero(ids) > 32 and data["read"] == 32 == data["context_length"]
  assert data["dropped"] and query.endswith(" ".join(data["dropped"]))
  assert query[data["dropped_from"]:] == " ".join(data["dropped"])
  rows = [int(r["url"].rsplit("/", 1)[1]) for r in data["results"]]
  phrases = [query[p["start"]:p["end"]] for p in data["phrases"]]
  assert "and a red bag" in phrases and all(r["explanation"]["phrases"] for r in data["results"])
  # Each drop: the score of the query minus that of the query without the phrase, encoded one by one here.
  for p, phrase in enumerate(data["phrases"]):
    rest = " ".join((query[:phrase["start"]] + " " + query[phrase["end"]:]).split())
    full, without = (searcher.encode([t])[0] @ searcher.embeddings[rows].T for t in (query, rest))
    got = [r["explanation"]["phrases"][p]["drop"] for r in data["results"]]
    np.testing.assert_allclose(got, full - without, atol=2e-4)
  # A phrase past the context changes nothing the model reads: its drop is 0.
  last = data["results"][0]["explanation"]["phrases"][-1]
  assert last["text"] == "and a red bag" and last["drop"] == pytest.approx(0.0, abs=1e-6)


def test_sentence_modes_combine_the_sentences(test_split):
  searcher = test_split["searcher"]
  caption = test_split["run"]["records"][0]["captions"][0]
  query = caption + PADDING
  sentences = searcher.pieces_of(query, "max")
  assert len(sentences) >= 3 and " ".join(sentences) == " ".join(query.split())
  each = searcher.encode(sentences)  # [S, D], one sentence at a time in truncate mode
  scores = each @ searcher.embeddings.T
  k = len(searcher.paths)
  best = searcher.answer([query], k, "max")[0]
  got = {h.id: h.score for h in best.hits}
  np.testing.assert_allclose([got[i] for i in range(k)], scores.max(axis=0), atol=2e-3)
  mean = each.mean(axis=0) / np.linalg.norm(each.mean(axis=0))
  hits = searcher.answer([query], k, "mean")[0].hits
  np.testing.assert_allclose([h.score for h in hits], np.sort(mean @ searcher.embeddings.T)[::-1], atol=2e-3)
  assert searcher.answer([query], 1, "mean")[0].reading["dropped"] == []  # each sentence fits the context


def test_occlusion_map_is_the_score_drop_of_each_masked_block(test_split, served):
  searcher = test_split["searcher"]
  query, row = test_split["run"]["records"][0]["captions"][0], 0
  drops, side = searcher.occlusion(query, row)
  assert side == 8 and drops.shape == (6, 2)  # 48 × 16 images, 8-pixel patches
  image = encoding.load_image(searcher.paths[row], (48, 16))
  text = searcher.encode([query])[0]
  masked = image.copy()
  masked[16:24, 8:16] = 0.0  # block (2, 1), masked here by hand
  a, b = encoding.encode_arrays(searcher.run.model, searcher.mesh, searcher.run.params, np.stack([image, masked]))
  assert drops[2, 1] == pytest.approx(float(text @ a - text @ b), abs=2e-4)
  png = fetch(served, f"/occlusion/{row}.png?" + urllib.parse.urlencode({"q": query}))
  with Image.open(io.BytesIO(png)) as im:
    assert im.height == 256 and im.mode == "RGB"


def person_and_mask(seed: int):
  """A rendered synthetic person (no noise, blur or occluder) of 96 × 32, the RGB of its upper garment, and its
  person mask: the pixels that change when the person is not drawn on the same background."""
  rng = np.random.default_rng(seed)
  attrs = synthetic_attributes.sample_identity(rng)
  shot = dataclasses.replace(synthetic_shots.sample_shot(rng, camera=seed % 4), noise=0.0, blur=0.0, occluder=None,
                             colour_jitter=0, brightness=1.0, tint=(1.0, 1.0, 1.0), gradient=0.0)
  image = synthetic_render.render(attrs, shot, (96, 32))
  with mock.patch.object(synthetic_render, "_draw_person", lambda *a, **kw: None):
    background = synthetic_render.render(attrs, shot, (96, 32))
  mask = np.abs(np.asarray(image, np.int16) - np.asarray(background, np.int16)).max(-1) > 12
  return np.asarray(image, np.float32) / 255.0, mask, np.asarray(synthetic_render.RGB[attrs["upper.colour"]]) / 255.0


def test_occluding_the_described_garment_drops_more_than_the_background():
  person_blocks, background_blocks = [], []
  for seed in range(6):
    image, mask, colour = person_and_mask(seed)
    near = lambda batch: (np.abs(batch - colour).max(-1) < 0.12).mean(axis=(1, 2))  # "wears <colour>" scorer
    drops = attribution.occlusion_map(image, 8, near)
    person = mask.reshape(12, 8, 4, 8).mean(axis=(1, 3))  # person fraction of each 8 × 8 block
    person_blocks += list(drops[person >= 0.5])
    background_blocks += list(drops[person == 0])
  assert np.mean(person_blocks) > 0.005 > abs(np.mean(background_blocks))
  assert np.mean(person_blocks) > 3 * np.mean(background_blocks)


def test_faiss_index_answers_like_the_exact_one(test_split, tmp_path):
  """The same folder with --kind=faiss (vectors reused, nothing encoded): the same hits and scores on a gallery small
  enough for one cell, the file checksummed like the others, and a damaged one refused."""
  index = tmp_path / "index"
  shutil.copytree(test_split["index"], index)
  meta = indexing.build(test_split["run"]["workdir"], os.path.join(test_split["run"]["data"], "imgs"), str(index),
                       batch_size=16, paths=test_split["searcher"].paths, kind="faiss")
  assert meta["num_encoded"] == 0 and meta["kind"] == "faiss" and meta["ann"]["factory"] == "IVF1,Flat"
  assert ann.ANN_FILE in meta["sha256"] and meta["fingerprint"] == index_files.read_meta(test_split["index"])["fingerprint"]
  approx, exact = Searcher(str(index), warm=False), test_split["searcher"]
  captions = [r["captions"][0] for r in test_split["run"]["records"] if r["split"] == "test"][:4]
  for a, b in zip(approx.search(captions, 5), exact.search(captions, 5)):
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
  with open(index / ann.ANN_FILE, "r+b") as f:
    f.seek(-8, os.SEEK_END)
    f.write(b"\x00" * 8)
  with pytest.raises(BadIndex, match="ann.faiss"):
    Searcher(str(index), warm=False)


def test_hnsw_and_ivf_find_the_true_neighbours_of_clustered_vectors():
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((50, 32))
  vectors = np.repeat(centres, 40, axis=0) + 0.3 * rng.standard_normal((2000, 32))  # 50 people × 40 images
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  queries = centres[:20] + 0.5 * rng.standard_normal((20, 32))
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]  # numpy brute force
  for factory, probe in (("IVF16,Flat", 4), ("HNSW16", 64)):
    index, record = ann.build(vectors, factory, probe)
    _, rows = ann.search(index, queries, 10)
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)])
    assert recall >= 0.9, (factory, recall)
    assert record == {"factory": factory, "probe": probe, "num_rows": 2000}
