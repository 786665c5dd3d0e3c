"""The binding measures (``tpsearch_jax.binding``) of a part model on a synthetic_pedes split, for results.json.

The split's images are read with the evaluation preprocessing (``data/preprocess``, no TensorFlow) and its captions
with the run's tokenizer; the ground truth (person masks, region rows, which words describe which region) comes
from ``data/synthetic/truth``. Runs on one process (the params are read to the host); elsewhere it is skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tpsearch_jax import binding
from tpsearch_jax.data import preprocess
from tpsearch_jax.data.synthetic import truth
from tpsearch_jax.models import CLIPConfig, ModelOptions, backbones
from tpsearch_jax.models.text_tokenizers import caption_tokenizer

PART_OF_REGION = {"hair": "head", "hat": "head", "glasses": "head", "upper": "upper", "lower": "lower",
                  "shoes": "shoes"}  # the part a twin pair differs in ("lower.type" → "lower") → its region
COVERS = 0.3  # a stripe covers the regions spanning at least this share of its rows on average (else its largest)
BATCH = 32


def applies(model_options: ModelOptions, data) -> bool:
  """Whether the binding measures are reported: a part model (``model_options.use_parts``) on synthetic_pedes
  (``data``: the run's data options / ``config.data``), one process."""
  return data.name == "synthetic_pedes" and model_options.use_parts and jax.process_count() == 1


def _embed_all(model, params, method: str, x: np.ndarray) -> tuple[dict, dict]:
  """``method`` over the rows of x in batches of BATCH (the last padded, one compilation) → (outputs, sown
  intermediates), each concatenated over the rows."""
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b, method=method, mutable=["intermediates"]))
  outs, inters = [], []
  for i in range(0, len(x), BATCH):
    chunk = x[i:i + BATCH]
    pad = np.zeros((BATCH - len(chunk),) + chunk.shape[1:], chunk.dtype)
    out, inter = fn(params, jnp.asarray(np.concatenate([chunk, pad])))
    outs.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a)[:n], out))
    inters.append(jax.tree.map(lambda a, n=len(chunk): np.asarray(a)[:, :n], inter.get("intermediates", {})))
  cat = lambda trees, axis: jax.tree.map(lambda *a: np.concatenate(a, axis=axis), *trees)  # noqa: E731
  return cat(outs, 0), cat(inters, 1)


def _token_regions(caption: str, ids: np.ndarray, tokenize, length: int) -> np.ndarray:
  """int [L]: the region of each token of ``ids`` (-1 none, -2 special / padding); all -2 when the caption's
  tokens are not (a prefix of) the concatenation of its words' tokens."""
  out = np.full(length, -2, np.int64)
  pieces, regions = [], []
  for word, region in truth.word_regions(caption):
    tok = tokenize([word], length)[0]
    tok = tok[1:np.count_nonzero(tok) - 1]  # drop the start and end tokens
    pieces.extend(tok.tolist())
    regions.extend([region] * len(tok))
  n = np.count_nonzero(ids)
  if ids[1:n - 1].tolist() == pieces[:n - 2]:  # a caption longer than the context is cut before its end token
    out[1:n - 1] = regions[:n - 2]
  return out


def twin_pairs(meta: dict) -> dict[int, tuple[int, str]]:
  """attributes.json → {id: (its near-twin's id, the part they differ in, e.g. "lower")} for both members of each
  pair (the generator records ``twin_of`` / ``differs_in`` on one of them)."""
  pairs = {}
  for p in meta["identities"]:
    if p.get("twin_of") is not None:
      part = str(p.get("differs_in") or "").split(".")[0]
      pairs[p["id"]], pairs[p["twin_of"]] = (p["twin_of"], part), (p["id"], part)
  return pairs


def _pieces(emb: dict) -> np.ndarray:
  p = np.concatenate([emb["global"][:, None], emb["coarse"], emb["part"]], axis=1).astype(np.float64)
  return p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)


def binding_report(model, params, clip: CLIPConfig, options: ModelOptions, data, ann, split: str = "test") -> dict:
  """{"foreground_auc", "stripe_coverage", "part_attention", "twin_gap", "coarse_cosine"} of ``split``.

  clip, options: the run's CLIP architecture and model options (``training.options.Options.clip`` / ``.model``);
  data: its data options (image size, normalisation, tokenizer); ann: ``annotations.Annotations`` of the dataset."""
  params = jax.device_get(params)
  ev = ann.split(split)
  meta = truth.read_meta(ann.root)
  size = tuple(int(v) for v in data.image_size)
  gh, gw = backbones.image_grid(clip, options)
  norm = data.get("normalization", "clip") or "clip"
  images, masks, rows = [], [], []
  for path in ev.image_paths:
    attrs, shot = truth.image_truth(meta, path.split("imgs/", 1)[-1])
    images.append(preprocess.load_eval_image(path, size, norm))
    m = truth.person_mask(attrs, shot, size)
    masks.append(m.reshape(gh, size[0] // gh, gw, size[1] // gw).mean(axis=(1, 3)).reshape(-1))
    rows.append(truth.region_rows(attrs, shot))
  img, _ = _embed_all(model, params, "image_embeddings", np.stack(images))
  tokenize, length = caption_tokenizer(data), int(data.context_length)
  ids = tokenize(list(ev.captions), length)
  txt, inter = _embed_all(model, params, "text_embeddings", ids)
  w = inter["part_model"]["text_attention"][0]  # [layers, Q, heads, N_D + P, L]
  attn = w.mean(axis=(0, 2))[:, options.part.num_queries:]

  parts = options.part.num_parts
  coverage = binding.stripe_coverage(np.stack(rows), parts)
  token_region = np.stack([_token_regions(c, i, tokenize, length) for c, i in zip(ev.captions, ids)])
  covers = (coverage >= COVERS) | (coverage == coverage.max(axis=1, keepdims=True))
  mass, chance = binding.attention_on_region_words(attn, token_region, covers)

  w = options.embed_weights
  weights = np.array([w.global_] + [w.coarse] * options.part.num_queries + [w.part] * parts)
  pv, pt = _pieces(img), _pieces(txt)
  pairs = twin_pairs(meta)
  own, twin, target = [], [], []
  for q, (pid, caption) in enumerate(zip(ev.caption_pids, ev.captions)):
    other, part = pairs.get(int(pid), (None, ""))
    region = PART_OF_REGION.get(part)
    twins = np.flatnonzero(ev.image_pids == other)
    if region is None or not len(twins):
      continue
    r = truth.REGIONS.index(region)
    if r not in {reg for _, reg in truth.word_regions(caption)}:
      continue  # the caption does not mention the part the twins differ in
    i = int(ev.caption_image_index[q])
    cov = binding.stripe_coverage(rows[i][None], parts)[:, r]
    stripes = cov >= 0.5 if np.any(cov >= 0.5) else cov == cov.max()
    mask = np.concatenate([[False] * (1 + options.part.num_queries), stripes])
    for j in twins:
      own.append(np.sum(pt[q] * pv[i], axis=-1))
      twin.append(np.sum(pt[q] * pv[j], axis=-1))
      target.append(mask)
  share, share_chance = (binding.twin_gap_share(np.stack(own), np.stack(twin), weights, np.stack(target))
                         if own else (float("nan"), float("nan")))
  report = {
      "foreground_auc": binding.foreground_auc(img["foreground"], np.stack(masks)),
      "stripe_coverage": {f"stripe_{i}": dict(zip(truth.REGIONS, np.round(coverage[i], 3).tolist()))
                          for i in range(parts)},
      "part_attention": {"mass": mass.tolist(), "chance": chance.tolist()},
      "twin_gap": {"share": share, "chance": share_chance, "pairs": len(own)},
      "coarse_cosine": {"image": binding.coarse_cosine(img["coarse"]), "text": binding.coarse_cosine(txt["coarse"])},
  }
  logging.info("binding on %s: foreground AUC %.3f, twin gap share %.3f (chance %.3f), coarse cosine %.3f / %.3f",
               split, report["foreground_auc"], share, share_chance, report["coarse_cosine"]["image"],
               report["coarse_cosine"]["text"])
  return report
