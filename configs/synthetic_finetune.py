"""Fine-tuning on synthetic_pedes from the pretraining stand-in, as the real benchmarks fine-tune from CLIP.

``configs/synthetic.py:pretrain`` trains the towers (SDM only) on 2,000 other identities (generator seed 1) whose
captions are "plain" (other templates and words, colours only). Every method here starts from that run's towers
(``config.init.run``: each parameter whose path and shape match; the part model, classifier, cross-former and MLM head
start fresh) and fine-tunes on the usual 1,000-identity data (generator seed 0, full part-level captions) with a
recipe shaped like the real one: the towers at a low lr (``optim.lr``), every module outside them at
``optim.lr_factor`` × that (``NEW_MODULE_GROUPS``, whatever the method's published groups).

    python -m tpsearch_jax.main --config=configs/synthetic.py:pretrain --workdir=/tmp/tpsearch_synthetic_pretrain
    python -m tpsearch_jax.main --config=configs/synthetic_finetune.py:pcc --workdir=/tmp/tpsearch_ft_pcc
    python -m tpsearch_jax.main --mode=eval --config=configs/synthetic_finetune.py:clip \\
        --workdir=/tmp/tpsearch_zero_shot          # zero-shot: the pretrained towers on this data, no training

Methods: every preset (clip, irra, fmfa, fmfa_paper, pcc, combined, ...), ``pcc_lineage`` / ``combined_lineage``
and the part ablations of ``configs/study_synthetic.py`` (``VARIANTS``: pcc_global, pcc_coarse, pcc_parts,
pcc_fixed_margin, pcc_cmr_freq, over the lineage values). ``pcc`` and ``combined`` get ``PART_RECIPE``, the part
recipe the fine-tuning study supports (docs/study_synthetic.md §A: level with the global methods, ahead of the
lineage values); ``pcc_lineage`` / ``combined_lineage`` keep the presets' values (the specification and its lineage,
as ``configs/cuhk.py``). The towers (3 layers, width 128) and max-pooled global embeddings are the pretraining
run's; lr, lr_factor and epochs are the study's starting point, not tuned.
"""

from __future__ import annotations

import os

from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs import base
from tpsearch_jax.training import optim

_HERE = os.path.dirname(os.path.abspath(__file__))
PRETRAINED = "/tmp/tpsearch_synthetic_pretrain"  # the default --workdir of configs/synthetic.py:pretrain
FINETUNE = {
    "optim.lr": 1e-4,  # the pretrained towers
    "optim.lr_factor": 10.0,  # every module outside params["clip"]: part model, classifier, cross-former, MLM head
    "optim.param_groups": optim.NEW_MODULE_GROUPS,
    "optim.eps": 1e-8,
    "optim.weight_decay": 4e-5,
    "schedule.num_epochs": 3,
    "schedule.warmup_epochs": 1,
    "eval.every_epochs": 1,
    "data.caption_uses_mlm_ids": False,  # only the MLM term should see masked captions (on: mlm_ids stay separate)
    "init.run": PRETRAINED,
}

# The part recipe of ``pcc`` and ``combined`` here: the ID term on the global embedding only (the lineage averages it
# over all 13 pieces through one classifier), and a global-heavy test score (global weight 12 = the 6 coarse + 6 part
# pieces together; the lineage weighs all 13 pieces alike).
PART_RECIPE = {"loss.id_pieces": "global", "model.embed_weights.global_": 12.0}
LINEAGE = {"pcc_lineage": "pcc", "combined_lineage": "combined"}  # the presets' own values


def get_config(method: str = "pcc"):
  """``method`` (a preset, a ``LINEAGE`` name or a part ablation) fine-tuned from ``PRETRAINED`` with ``FINETUNE``."""
  synthetic = load_config_module(os.path.join(_HERE, "synthetic.py"))
  variants = {name: (preset, dict(over)) for name, preset, over in
              load_config_module(os.path.join(_HERE, "study_synthetic.py")).VARIANTS}
  preset, extra = variants.get(method, (LINEAGE.get(method, method), {}))
  c = synthetic.get_config(preset)
  base.apply_overrides(c, dict(synthetic.DEMO[1]), "configs/synthetic.py:DEMO")
  base.apply_overrides(c, FINETUNE, "configs/synthetic_finetune.py")
  if method in ("pcc", "combined"):
    base.apply_overrides(c, PART_RECIPE, "configs/synthetic_finetune.py PART_RECIPE")
  base.apply_overrides(c, extra, f"configs/study_synthetic.py VARIANTS {method}")  # model.name stays the preset's
  return c
