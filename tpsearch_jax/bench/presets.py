"""Benchmark presets (model and workload sizes), dataset test sizes, and the per-method configs they give."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs import base
from tpsearch_jax.models import backbones
from tpsearch_jax.models import presets as model_presets
from tpsearch_jax.training.config_checks import resolve_config
from tpsearch_jax.training.options import Options

# (gallery images, query captions, identities) of the test splits.
DATASET_SIZES = {
    "ci": (40, 72, 10),
    "cuhk": (3074, 6156, 1000),
    "icfg": (19848, 19848, 1000),
}
_CUSTOM_SIZE = re.compile(r"^(\d+)x(\d+)x(\d+)$")  # QUERIESxGALLERYxIDS

_SMALL_CLIP = dict(embed_dim=256, image_size=(384, 128), patch_size=16, vision_width=256, vision_layers=4,
                   vision_heads=4, context_length=77, vocab_size=49408, text_width=256, text_layers=4, text_heads=4)
# The same size for the paper backbones (pcc_paper_vit / pcc_paper_rn50): BERT / ViT width 256 × 4 layers, a ResNet
# of half the ResNet-50 widths with one block per stage, E 256.
_SMALL_PAPER = {"embed_dim": 256, "bert": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
                "vit": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
                "resnet": dict(embedding_size=32, hidden_sizes=(128, 256, 512, 1024), depths=(1, 1, 1, 1))}


@dataclasses.dataclass(frozen=True)
class Preset:
  """Model size and workload sizes of one benchmark preset."""

  description: str
  clip: dict | None  # CLIPConfig fields; None = the config's default (ViT-B/16); "tiny" presets use tiny_model_config
  tiny: bool
  num_classes: int
  batch_size: int
  warmup: int
  steps: int  # per timing window
  windows: int
  eval_batch_size: int
  eval_batches: int  # batches per throughput measurement
  eval_sizes: tuple[str, ...]  # end-to-end evaluations (see dataset_size)
  metrics_sizes: tuple[str, ...]
  search_rows: int
  search_dim: int
  search_query_batch: int
  search_batches: int
  config_file: str | None = None  # the configs the methods start from when --config_file is not given (None: base)


PRESETS = {
    "ci": Preset("tiny model (48×16 images, width 32, 2 layers) and tiny workloads: a smoke test, not a measurement",
                 clip=None, tiny=True, num_classes=16, batch_size=8, warmup=1, steps=1, windows=1,
                 eval_batch_size=16, eval_batches=1, eval_sizes=("ci",), metrics_sizes=("ci",), search_rows=4096,
                 search_dim=64, search_query_batch=16, search_batches=1),
    "small": Preset("small towers (384×128 inputs, patch 16, width 256, 4 layers, embed 256) for CPUs; real metric "
                    "and search sizes", clip=_SMALL_CLIP, tiny=False, num_classes=11003, batch_size=16, warmup=1,
                    steps=2, windows=3, eval_batch_size=64, eval_batches=2, eval_sizes=(),
                    metrics_sizes=("cuhk", "icfg"), search_rows=1_000_000, search_dim=512, search_query_batch=256,
                    search_batches=3),
    "full": Preset("CLIP ViT-B/16 @ 384×128, text 77 tokens, 11,003 classes (CUHK-PEDES train ids)", clip=None,
                   tiny=False, num_classes=11003, batch_size=128, warmup=3, steps=10, windows=5, eval_batch_size=512,
                   eval_batches=6, eval_sizes=("cuhk", "icfg"), metrics_sizes=("cuhk", "icfg"),
                   search_rows=1_000_000, search_dim=512, search_query_batch=1024, search_batches=10),
    "demo": Preset("the towers of configs/synthetic.py (96×32 images, patch 8, width 128, 2 layers, context 32, "
                   "cross-former 1 layer), batch 64, 200 classes: the synthetic runs' train step", clip=None,
                   tiny=False, num_classes=200, batch_size=64, warmup=1, steps=2, windows=3, eval_batch_size=128,
                   eval_batches=2, eval_sizes=(), metrics_sizes=("cuhk",), search_rows=100_000, search_dim=128,
                   search_query_batch=256, search_batches=3, config_file="configs/synthetic.py"),
}
_REPO = pathlib.Path(__file__).resolve().parents[2]


def dataset_size(name: str) -> tuple[int, int, int]:
  """A key of DATASET_SIZES or ``QUERIESxGALLERYxIDS`` (e.g. 20000x20000x1000) → (gallery, queries, identities)."""
  if name in DATASET_SIZES:
    return DATASET_SIZES[name]
  match = _CUSTOM_SIZE.match(name)
  if match is None or min(int(x) for x in match.groups()) < 1:
    raise ValueError(f"unknown size {name!r}: choose from {','.join(DATASET_SIZES)} or QUERIESxGALLERYxIDS")
  queries, gallery, ids = (int(x) for x in match.groups())
  return gallery, queries, ids


def sizes(flag: str | None, default: tuple[str, ...]) -> list[str]:
  """The comma-separated size names of a ``--*_sizes`` flag, or the preset's when the flag is not given."""
  return [x for x in (flag.split(",") if flag is not None else default) if x]


def base_config(method: str, config_file: str | None = None):
  """``get_config(method)`` of the Python file ``config_file``, or of ``tpsearch_jax.configs.base`` when None."""
  module = base if config_file is None else load_config_module(config_file)
  return module.get_config(method)


def method_config(method: str, preset: Preset, args, attention: str = "xla") -> Any:
  """The base config of ``method`` with the preset's model size and the CLI's batch/precision/remat/FSDP choices."""
  config_file = args.config_file or (preset.config_file and str(_REPO / preset.config_file))
  config = base_config(method, config_file)
  with config.unlocked():
    if preset.tiny:
      tiny = model_presets.tiny_model_config(method, num_classes=preset.num_classes)
      config.model.update(tiny["model"])
    elif preset.clip is not None:
      config.model.clip.update(preset.clip)
      if config.model.backbone != "clip":  # the "small" preset's towers for the paper backbones
        config.model.embed_dim = _SMALL_PAPER["embed_dim"]
        for key in ("bert", "vit", "resnet"):
          config.model[key].update(_SMALL_PAPER[key])
    image_size = tuple(config.model.clip.image_size)
    config.model.clip.image_size = image_size
    config.data.image_size = image_size
    config.model.num_classes = preset.num_classes
    config.model.dtype = args.dtype
    config.model.remat = bool(args.remat)
    config.model.attention_impl = None if attention == "xla" else attention
    config.train.batch_size = int(args.batch_size or preset.batch_size)
    config.train.fsdp = bool(args.fsdp)
    if getattr(args, "mlm_head", None):
      config.loss.mlm_head = args.mlm_head
    config.eval.batch_size = int(args.eval_batch_size or preset.eval_batch_size)
  return resolve_config(config)


def config_summary(config, options: Options, **extra) -> dict:
  """The record config of a method run (``config`` and its ``run_options``): method, batch, dtype, remat, fsdp,
  attention and the model's size."""
  c = options.clip
  model = (f"ViT w{c.vision_width}×{c.vision_layers} p{c.patch_size} @ {c.image_size[0]}×{c.image_size[1]}, "
           f"text w{c.text_width}×{c.text_layers}, E{c.embed_dim}")
  if options.model.backbone != "clip":
    model = backbones.summary(c, options.model)
  return {"method": config.model.name, "batch_size": int(config.train.batch_size), "dtype": config.model.dtype,
          "remat": bool(config.model.remat), "fsdp": bool(config.train.fsdp), "mlm_head": config.loss.mlm_head,
          "attention": config.model.attention_impl or "xla",
          "model": model, **extra}
