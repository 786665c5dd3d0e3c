"""synthetic_pedes: a procedural, seeded text-based person search set in the CUHK-PEDES on-disk format.

Each identity is a table of part attributes (hair, hat, glasses, upper garment, lower garment, shoes, bag) drawn with
skewed frequencies; about a quarter of the identities are near-twins of another identity that differ in exactly one
part. Every identity appears in ``images_per_id`` rendered images with different cameras, views, poses, framing,
lighting, blur and occlusion, and every image gets ~2 captions from a small grammar that mentions a random subset of the
visible parts. Splits are identity-disjoint (twin pairs stay in one split). The output folder holds ``imgs/``,
``reid_raw.json`` (file_path, captions, 1-based id, split) and ``attributes.json`` (per-identity attribute table, twin
links and per-image nuisances) so studies and tests can check captions against the truth.

The generator writes only into an empty (or absent) folder or one it marked as its own (``.synthetic_pedes.json``,
written first, so an interrupted generation is recognised); replacing a dataset deletes only the files it writes
(the two JSON files and the ``imgs/cam*/NNNNN_NN.{jpg,png}`` images), never anything else in the folder.

    python -m tpsearch_jax.data.synthetic --out=/data/synthetic_pedes --num_ids=300 --images_per_id=4
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence

import numpy as np

from tpsearch_jax.data.image_check import CACHE_NAME
from tpsearch_jax.data.synthetic import attributes as sa
from tpsearch_jax.data.synthetic import captions as sc
from tpsearch_jax.data.synthetic import render as sr
from tpsearch_jax.data.synthetic import shots

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = ".synthetic_pedes.json"
OWN_JSON = ("reid_raw.json", "attributes.json")
OWN_IMAGE = re.compile(r"cam\d+/\d{5}_\d{2}\.(jpg|png)")  # relative to imgs/, as ``generate`` names them
IGNORED = (CACHE_NAME,)  # written beside any dataset by the image check; not foreign
CAPTION_STYLES = ("full", "plain")
EXTRA_CAPTION_PROB = 0.05  # a few images get a third caption, as in CUHK-PEDES


def generate(root: str, num_ids: int = 300, images_per_id: int = 4, seed: int = 0,
             image_size: Sequence[int] = (144, 48), split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
             twin_fraction: float = 0.25, image_format: str = "jpg", caption_style: str = "full",
             overwrite: bool = False) -> dict:
  """Writes the dataset folder ``root`` (imgs/, reid_raw.json, attributes.json); returns a summary dict.

  image_size: (H, W) of the saved images. caption_style: "full" (the part-level grammar) | "plain" (other templates
  and words, upper/lower colours only: ``captions.make_plain_caption``). The result depends only on the arguments
  (same seed → same bytes).
  """
  h, w = (int(v) for v in image_size)
  if num_ids < 3 or images_per_id < 1:
    raise ValueError(f"need num_ids >= 3 and images_per_id >= 1, got {num_ids}, {images_per_id}")
  if h < 32 or w < 16:
    raise ValueError(f"image_size (H, W) must be at least (32, 16), got {(h, w)}")
  if image_format not in ("jpg", "png"):
    raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
  if caption_style not in CAPTION_STYLES:
    raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {caption_style!r}")
  if not 0.0 <= twin_fraction <= 0.5:
    raise ValueError(f"twin_fraction must be in [0, 0.5], got {twin_fraction}")
  args = {"seed": seed, "num_ids": num_ids, "images_per_id": images_per_id, "image_size": [h, w],
          "split_fractions": list(split_fractions), "twin_fraction": twin_fraction, "image_format": image_format}
  if caption_style != "full":  # recorded only when not the default, so older folders still match their arguments
    args["caption_style"] = caption_style
  _prepare_folder(root, overwrite, args)
  start = time.perf_counter()

  rng = np.random.default_rng(seed)
  people = sa.sample_identities(num_ids, rng, twin_fraction)
  splits = sa.assign_splits([p["family"] for p in people], split_fractions, rng)
  order = [i for s in ("train", "val", "test") for i in rng.permutation(num_ids) if splits[i] == s]
  ids = {idx: n + 1 for n, idx in enumerate(order)}  # 1-based; train ids come first, as CUHK-PEDES requires

  records, images = [], {}
  for idx in order:
    pid, attrs = ids[idx], people[idx]["attributes"]
    for k in range(images_per_id):
      shot_rng = np.random.default_rng([seed, 1, pid, k])
      shot = shots.sample_shot(shot_rng, camera=int(shot_rng.integers(shots.NUM_CAMERAS)))
      rel = f"cam{shot.camera}/{pid:05d}_{k:02d}.{image_format}"
      img = sr.render(attrs, shot, (h, w))
      path = os.path.join(root, "imgs", rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      if image_format == "jpg":
        img.save(path, quality=shot.quality)
      else:
        img.save(path, optimize=False)
      visible = shots.visible_parts(attrs, shot)
      records.append({"split": splits[idx], "captions": _captions(attrs, visible, [seed, 2, pid, k], caption_style),
                      "file_path": rel, "id": pid})
      images[rel] = {"id": pid, "camera": shot.camera, "view": shot.view, "occluder": shot.occluder,
                     "blur": round(shot.blur, 3), "visible": sorted(visible)}
  records = [records[i] for i in rng.permutation(len(records))]  # splits interleave, as in reid_raw.json

  identities = []
  for idx in order:
    p = people[idx]
    identities.append({
        "id": ids[idx], "split": splits[idx],
        "attributes": {k: p["attributes"][k] for k in sa.KEYS},
        "latent": {"skin": p["attributes"]["_skin"], "inner": p["attributes"]["_inner"]},
        "twin_of": None if p["twin_of"] is None else ids[p["twin_of"]],
        "differs_in": p["differs_in"],
    })
  meta = {"format_version": FORMAT_VERSION, "generator": args, "identities": identities, "images": images}
  _write_json(os.path.join(root, "reid_raw.json"), records)
  _write_json(os.path.join(root, "attributes.json"), meta)

  summary = {"root": os.path.abspath(root), "seconds": round(time.perf_counter() - start, 2), "splits": {}}
  for s in ("train", "val", "test"):
    recs = [r for r in records if r["split"] == s]
    summary["splits"][s] = {"ids": len({r["id"] for r in recs}), "images": len(recs),
                            "captions": sum(len(r["captions"]) for r in recs)}
  summary["twins"] = sum(1 for p in identities if p["twin_of"] is not None)
  log.info("synthetic_pedes written: %s", summary)
  return summary


def ensure(root: str, **kwargs) -> dict:
  """Generates ``root`` unless it already holds a synthetic_pedes folder made with the same arguments.

  kwargs: as ``generate`` (minus ``overwrite``). Returns the generator arguments stored in attributes.json. A folder
  made with other arguments raises (pass overwrite=True to ``generate`` or choose another folder).
  """
  defaults = {k: p.default for k, p in inspect.signature(generate).parameters.items() if k not in ("root", "overwrite")}
  unknown = set(kwargs) - set(defaults)
  if unknown:
    raise TypeError(f"unknown synthetic_pedes arguments: {', '.join(sorted(unknown))}")
  want = {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in (defaults | kwargs).items()}
  if want.get("caption_style") == "full":
    del want["caption_style"]  # the default is not recorded (generate)
  meta_path = os.path.join(root, "attributes.json")
  if not os.path.exists(os.path.join(root, "reid_raw.json")) or not os.path.exists(meta_path):
    generate(root, **want, overwrite=True)
  with open(meta_path, encoding="utf-8") as f:
    have = json.load(f)["generator"]
  diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
  style = (have.get("caption_style", "full"), want.get("caption_style", "full"))
  if style[0] != style[1]:
    diff["caption_style"] = style
  if diff:
    raise ValueError(f"{root} holds synthetic_pedes generated with other arguments (stored, requested): {diff}; "
                     "regenerate with --overwrite or use another folder")
  return have


def _captions(attrs: dict, visible: set[str], seed: list[int], style: str = "full") -> list[str]:
  rng = np.random.default_rng(seed)
  n = 3 if rng.random() < EXTRA_CAPTION_PROB else 2
  out: list[str] = []
  for _ in range(8 * n):  # distinct captions per image; the grammar is rich enough that this ends quickly
    c = sc.make_caption(attrs, visible, rng) if style == "full" else sc.make_plain_caption(attrs, rng)
    if c not in out:
      out.append(c)
    if len(out) == n:
      break
  return out


def _files(root: str) -> Iterator[str]:
  """The files under ``root`` (none if absent), relative to it, "/"-separated."""
  for d, _, fs in os.walk(root):
    for f in fs:
      yield os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")


def _is_ours(root: str) -> bool:
  """Whether ``root`` carries the generator's marker (or, from before the marker, its attributes.json)."""
  if os.path.isfile(os.path.join(root, MARKER)):
    return True
  try:
    with open(os.path.join(root, "attributes.json"), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and "format_version" in meta and "generator" in meta


def _written_by_us(rel: str) -> bool:
  return rel in OWN_JSON or (rel.startswith("imgs/") and OWN_IMAGE.fullmatch(rel[len("imgs/"):]) is not None)


def _prepare_folder(root: str, overwrite: bool, args: dict) -> None:
  """Makes ``root`` ready for a new dataset: absent or empty, or ours (then cleared of our files with overwrite)."""
  if not _is_ours(root):
    foreign = next((f for f in _files(root) if f not in IGNORED), None)
    if foreign is not None:
      raise FileExistsError(f"{root} is not empty and is not a synthetic_pedes folder (no {MARKER}; it holds e.g. "
                            f"{foreign}): pick an empty folder for it, or remove it")
  else:
    ours = [f for f in _files(root) if _written_by_us(f)]
    if ours and not overwrite:
      raise FileExistsError(f"{root} already holds a synthetic_pedes dataset ({len(ours)} files); pass "
                            "overwrite=True (--overwrite) to replace it")
    for rel in ours:
      os.remove(os.path.join(root, rel))
    for folder in sorted({os.path.dirname(os.path.join(root, rel)) for rel in ours if rel.startswith("imgs/")}):
      if not os.listdir(folder):  # an imgs/cam* folder emptied above
        os.rmdir(folder)
  os.makedirs(os.path.join(root, "imgs"), exist_ok=True)
  _write_json(os.path.join(root, MARKER), {"format_version": FORMAT_VERSION, "generator": args})


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
  return tuple(float(v) for v in text.split(","))


def main(argv: Sequence[str] | None = None) -> dict:
  """Command line entry point; returns the summary."""
  ap = argparse.ArgumentParser(prog="python -m tpsearch_jax.data.synthetic", description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="dataset folder to write (imgs/, reid_raw.json, attributes.json)")
  ap.add_argument("--num_ids", type=int, default=300)
  ap.add_argument("--images_per_id", type=int, default=4)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--image_size", type=_ints, default=(144, 48), help="H,W of the saved images")
  ap.add_argument("--split_fractions", type=_floats, default=(0.8, 0.1, 0.1), help="train,val,test identity shares")
  ap.add_argument("--twin_fraction", type=float, default=0.25, help="share of identities that are near-twins")
  ap.add_argument("--format", choices=("jpg", "png"), default="jpg")
  ap.add_argument("--overwrite", action="store_true", help="replace imgs/ and the JSON files if present")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  summary = generate(args.out, num_ids=args.num_ids, images_per_id=args.images_per_id, seed=args.seed,
                     image_size=args.image_size, split_fractions=args.split_fractions,
                     twin_fraction=args.twin_fraction, image_format=args.format, overwrite=args.overwrite)
  print(json.dumps(summary, indent=1))
  return summary
