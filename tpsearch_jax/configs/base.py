"""Shared base configuration: IRRA's training recipe (docs/methods.md §4) on CLIP ViT-B/16 at 384×128.

``get_config(method)`` copies the method preset (``tpsearch_jax/models/presets.py``) into ``config.model`` /
``config.loss`` and applies the method's recipe (``configs/recipes.py``: "section.field": value, e.g. FMFA HEAD's lr
and single group) to the other sections. Dataset files (configs/cuhk.py, icfg.py, rstp.py, synthetic.py) call it,
set the data fields and apply their per-method table with ``apply_per_method`` (e.g. the FMFA paper's ICFG-PEDES
margins and 100 epochs). Every field can be overridden on the command line, e.g.
``--config=configs/cuhk.py:fmfa --config.optim.lr=5e-6``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from tpsearch_jax.configs.recipes import method_recipe
from tpsearch_jax.models.presets import METHODS, method_preset
from tpsearch_jax.training import optim
from tpsearch_jax.user_errors import UserError


def _clip_vit_b16() -> dict:
  return dict(embed_dim=512, image_size=(384, 128), patch_size=16, vision_width=768, vision_layers=12,
              vision_heads=12, context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8,
              vision_mlp_dim=config_dict.placeholder(int),  # MLP hidden widths; None = 4 x width
              text_mlp_dim=config_dict.placeholder(int))


def apply_overrides(c: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str) -> None:
  """Sets each "section.field" (dots nest) of ``overrides`` in ``c``; an unknown field raises naming ``where``."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = c
    for name in parents:
      if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
        raise UserError(f"{where}: {dotted!r} names no config section")
      node = node[name]
    if leaf not in node:
      raise UserError(f"{where}: {dotted!r} names no config field")
    node[leaf] = value


def apply_per_method(c: ml_collections.ConfigDict, table: Mapping[str, Mapping[str, Any]], method: str,
                     where: str) -> None:
  """Applies the entry of ``method`` of a dataset file's table {method: {"section.field": value}} (none: nothing)."""
  unknown = sorted(set(table) - set(METHODS))
  if unknown:
    raise UserError(f"{where}: per-method overrides for unknown method(s) {unknown}; known: {METHODS}")
  apply_overrides(c, table.get(method, {}), f"{where}:{method}")


def get_config(method: str = "irra") -> ml_collections.ConfigDict:
  """Base config for ``method`` (a name of ``tpsearch_jax.models.presets.METHODS``); model and loss from its preset."""
  c = ml_collections.ConfigDict()
  c.seed = 1

  image_size = config_dict.FieldReference((384, 128), field_type=tuple)
  c.model = ml_collections.ConfigDict(dict(
      name=method,
      clip=_clip_vit_b16(),
      dtype="auto",  # "auto": bfloat16 on GPU/TPU, float32 on CPU; or "float32" | "bfloat16". Params stay f32
      remat=False,
      attention_impl=config_dict.placeholder(str),  # None = XLA; "cudnn"
      num_classes=config_dict.placeholder(int),  # None: number of train identities, from the annotation
  ))
  c.model.clip.image_size = image_size
  c.loss = ml_collections.ConfigDict()
  preset = method_preset(method)  # raises on an unknown method
  c.model.update(preset["model"])
  c.loss.update(preset["loss"])

  c.data = ml_collections.ConfigDict(dict(
      name="",  # cuhk_pedes | icfg_pedes | rstp_reid | synthetic_pedes
      root="",  # dataset folder holding imgs/ and the annotation JSON
      normalization="clip",  # image mean/std: "clip" | "imagenet" (ResNet-50) | "half" (ImageNet ViT); data/preprocess
      context_length=77,
      tokenizer="clip",  # "clip" (BPE) | "bert" (WordPiece: the pcc_paper_* presets)
      tokenizer_path=config_dict.placeholder(str),  # BERT folder or vocab.txt; None: config.init.bert's folder
      caption_uses_mlm_ids=True,  # reference quirk: every loss sees the masked caption (docs/methods.md §5.1)
      augment=True,
      random_erasing=0.5,
      color_jitter=False,
      identity_sampler=False,
      num_instances=4,
      # True: ⌊N/B⌋ full batches per epoch, the shuffled remainder dropped (one compiled step). False: the reference's
      # ⌈N/B⌉ (PyTorch drop_last=False): the last batch is padded to B with a "valid" row mask that every loss
      # honours exactly (the step equals the step on the short batch; tests/test_loss_masks.py).
      drop_last=True,
      verify_images=True,  # decode every image the run reads at start-up, before compiling (cached; see check_cache)
      # A skipped image takes its captions with it (train records; an eval gallery image and its queries); every
      # skip is counted per split, logged and written to results.json ("skipped").
      skip_corrupt=False,  # skip images that are missing or do not decode
      skip_missing=False,  # skip images that are missing
      check_cache="",  # decoded-image check cache: "" = <root>/.tpsearch_checked.json, a folder/file, or "off"
      use_tfds=False,  # read the images from the TFDS records (python -m tpsearch_jax.data.tfds_builders)
      tfds_data_dir=config_dict.placeholder(str),  # where they were prepared; None = TFDS's default data dir
      num_parallel_calls=-1,  # ≤ 0: one per usable host core
      num_threads=0,  # > 0: a private tf.data thread pool of this size; 0 = TF's shared pool
      synthetic=dict(num_ids=0, images_per_id=0),
  ))
  c.data.image_size = image_size

  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-5, b1=0.9, b2=0.999, eps=1e-3,
      weight_decay=4e-5,  # L2 added to the gradient (PyTorch Adam weight_decay), not AdamW
      weight_decay_bias=0.0, lr_factor=5.0, bias_lr_factor=2.0,
      # (regex on the "/"-joined param path, lr multiplier, weight decay), first match wins; numbers or optim field
      # names; () = one group with lr and wd on everything (FMFA HEAD). See tpsearch_jax.training.optim.
      param_groups=optim.IRRA_GROUPS,
      grad_clip_norm=0.0,  # 0 = off (the reference does not clip)
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      name="cosine", num_epochs=60, warmup_epochs=5, warmup_factor=0.1,
      milestones=(), gamma=0.1,  # name="step": lr × gamma at each milestone epoch (PyTorch MultiStepLR)
      per_step=False,  # False: the factor changes once per epoch (reference); True: every step
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,  # global, over all devices and hosts
      num_steps=-1,  # > 0: stop after this many steps (the schedule still spans schedule.num_epochs)
      log_every_steps=50,
      checkpoint_every_steps=0,  # 0: at the end of every epoch
      keep_checkpoints=3,
      async_checkpointing=True,
      prefetch=2,
      fsdp=False,  # True = FSDP over every device (shorthand for mesh.data=1, mesh.fsdp=-1)
      fsdp_min_size=2 ** 14,  # arrays with fewer elements stay replicated under FSDP
      profile=False,  # CLU profiler trace of a few steps into the workdir
      allow_config_change=False,  # resume even when optim/schedule/loss/data differ from the checkpoint's
      # Stall watchdog (training/watchdog.py): when no step, evaluation or save finishes within this many seconds,
      # every process writes its stacks to WORKDIR/stall_<process>.txt and exits with status 4. < 0: 1800 s, growing
      # to 3× the longest gap seen between finished steps; 0: off.
      stall_timeout_s=-1.0,
  ))
  # Device mesh (tpsearch_jax/sharding.py): the batch is split over data × fsdp devices; params and optimizer state
  # are sharded over "fsdp" (largest divisible dim) and replicated over "data". -1 = the rest of the devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.eval = ml_collections.ConfigDict(dict(
      select_on=config_dict.FieldReference("val", field_type=str),  # "val" | "test" (reproduction only) | "none"
      splits=("val", "test"),  # evaluated at the end with the selected checkpoint
      # Query subsets of the test split, each reported as a row "test_<name>" against the same gallery where the
      # dataset defines it (training/setup.py QUERY_SUBSETS): "hard" = synthetic_pedes' hard queries
      # (data/synthetic/hard_subset.py). () = none.
      subsets=("hard",),
      batch_size=512,  # global
      every_epochs=1,
      block_size=1024,  # query block of the on-device metric computation
      checkpoint="auto",  # --mode=eval: "auto" (best, else last, else init.clip) | "best" | "last" | a step folder
  ))
  c.init = ml_collections.ConfigDict(dict(
      clip=config_dict.placeholder(str),  # HF CLIP folder or OpenAI-layout .npz; None = random init
      # Paper backbones (model.backbone vit_bert / rn50_bert): HF folders (bert-base-uncased,
      # google/vit-base-patch16-224, microsoft/resnet-50) or .msgpack files from the convert CLI; None = random init
      bert=config_dict.placeholder(str),
      vit=config_dict.placeholder(str),
      resnet=config_dict.placeholder(str),
      # A run of this project: WORKDIR (best, else last checkpoint) or WORKDIR:STEP; every param whose path and shape
      # match is loaded, the rest stays fresh (training/init_from_run.py). run_exclude: regex of params kept fresh.
      run=config_dict.placeholder(str),
      run_exclude=config_dict.placeholder(str),
  ))
  apply_overrides(c, method_recipe(method), f"configs/recipes.py:{method}")
  return c
