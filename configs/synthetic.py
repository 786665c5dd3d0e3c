"""synthetic_pedes: a CPU-sized end-to-end run (generate data, train small towers from scratch, evaluate).

The dataset (1,000 identities: 960 train, 20 val, 20 test, 4 images each) is generated on first use into
``data.root`` (no downloads). Small towers (width 128, 2 layers), 96×32 images with 8×8 patches and 32-token captions
keep one run within minutes on a 2-core CPU; the recipe keeps the reference parameter groups and warm-up + cosine
schedule, with lr 1e-3, Adam eps 1e-8, no image augmentation and identity-balanced batches, as the towers start from
random weights (docs/study_synthetic.md). ``make demo`` is the ``demo`` run: ``clip`` (SDM only, the study's best
method for a CPU budget) with the changes of ``DEMO`` that the study's recipe search found (§3.3):

    python -m tpsearch_jax.main --config=configs/synthetic.py:demo --workdir=/tmp/tpsearch_synthetic
    python -m tpsearch_jax.main --config=configs/synthetic.py:pretrain --workdir=/tmp/tpsearch_synthetic_pretrain
    python -m tpsearch_jax.main --config=configs/synthetic.py:clip --workdir=/tmp/tpsearch_synthetic_clip
    python -m tpsearch_jax.main --config=configs/synthetic.py:irra --workdir=/tmp/tpsearch_synthetic_irra
    python -m tpsearch_jax.main --config=configs/synthetic.py:pcc_paper_vit --workdir=/tmp/tpsearch_synthetic_vit

The paper backbones (pcc_paper_vit / pcc_paper_rn50) get towers of the same size (BERT / ViT width 128, 2 layers;
a 4-stage ResNet of widths 32-256, one block each) and the package's tiny WordPiece vocabulary; from random weights
every tower trains (the BatchNorm statistics stay frozen at their initial 0 / 1), with the lineage's step schedule
scaled to the 12 epochs.
"""

from __future__ import annotations

from tpsearch_jax.configs import base
from tpsearch_jax.models.bert.tokenizer import TINY_VOCAB
from tpsearch_jax.training import optim

EPOCHS = 12
# The demo: (method, overrides). Chosen on val and on held-out galleries over three seeds (docs/study_synthetic.md
# §3.3): 3-layer towers at lr 5e-4 and max-pooled global embeddings (patch tokens / valid text tokens, as Park et
# al.'s global branch) instead of the CLS / EOT token.
DEMO = ("clip", {"model.clip.vision_layers": 3, "model.clip.text_layers": 3, "optim.lr": 5e-4,
                 "model.global_pool": "max"})


# The pretraining stand-in (configs/synthetic_finetune.py starts from it through config.init.run): the demo's recipe
# (SDM only, 3-layer towers) on a disjoint pool of identities (generator seed 1) with a distribution shift that
# fine-tuning has to close: "plain" captions (other templates and words, upper / lower colours only, no part detail).
PRETRAIN_IDS = 2000
PRETRAIN = {"data.root": "/tmp/tpsearch_data/synthetic_pedes_pretrain",
            "data.synthetic": dict(num_ids=PRETRAIN_IDS, images_per_id=4, seed=1, image_size=(144, 48),
                                   split_fractions=(0.98, 0.01, 0.01), caption_style="plain"),
            "schedule.num_epochs": 4, "eval.every_epochs": 2, "eval.splits": ("val",)}


def get_config(method: str = "irra"):
  """A small synthetic_pedes run of ``method`` (EPOCHS epochs × 122 steps of batch 64), of ``demo`` (DEMO), or
  ``pretrain`` (DEMO + PRETRAIN: the stand-in for pretrained towers)."""
  if method in ("demo", "pretrain"):
    c = get_config(DEMO[0])
    base.apply_overrides(c, DEMO[1], "configs/synthetic.py:demo")
    if method == "pretrain":
      base.apply_overrides(c, PRETRAIN, "configs/synthetic.py:pretrain")
    return c
  c = base.get_config(method)
  c.data.name = "synthetic_pedes"
  c.data.root = "/tmp/tpsearch_data/synthetic_pedes_1000"
  # 20 test identities keep the gallery at 80 images; the 960 training identities give the attribute combinations
  # that a model trained from scratch needs to generalise to unseen people (docs/study_synthetic.md §3).
  c.data.synthetic = dict(num_ids=1000, images_per_id=4, seed=0, image_size=(144, 48),
                          split_fractions=(0.96, 0.02, 0.02))
  c.data.image_size = (96, 32)
  c.data.context_length = 32  # covers the median caption (26 tokens); longer ones are cut, EOT kept
  c.model.clip.update(dict(embed_dim=128, patch_size=8, vision_width=128, vision_layers=2, vision_heads=4,
                           context_length=32, text_width=128, text_layers=2, text_heads=4))
  c.model.dtype = "float32"
  c.model.cross_layers = 1
  c.model.cross_heads = 4
  c.model.part.update(heads=4)
  c.data.augment = False  # random erasing and crops slow learning from scratch on 96×32 images
  # Identity-balanced batches (16 ids × 4 captions): from random init, random batches of ~1 positive each let SDM
  # collapse every embedding onto one direction (loss at the uniform-softmax value; docs/study_synthetic.md).
  c.data.identity_sampler = True
  c.optim.lr = 1e-3  # towers start from random weights; 3e-3 destabilises SDM after the warm-up
  c.optim.eps = 1e-8  # the reference's 1e-3 damps the small gradients of towers trained from scratch
  if c.optim.param_groups == optim.NEW_MODULE_GROUPS:  # pcc, combined
    # Their ×lr_factor for every module outside params["clip"] is meant for new modules on a pretrained CLIP; here
    # every module starts random, and the part model and classifier at 5× the towers' lr overshoot (ID term above
    # log K, text coarse / part embeddings collapse to one vector, gradient spikes): pcc stays at chance.
    c.optim.lr_factor = 1.0
  c.schedule.num_epochs = EPOCHS
  c.schedule.warmup_epochs = 1
  c.train.batch_size = 64
  c.train.log_every_steps = 20
  c.train.keep_checkpoints = 1
  c.eval.batch_size = 128
  c.eval.every_epochs = 2
  if c.model.backbone != "clip":
    _small_paper_backbones(c)
  return c


def _small_paper_backbones(c) -> None:
  """Towers of the CLIP ones' size, the tiny vocabulary, every tower trained (BERT too: it starts random)."""
  vocab = len(TINY_VOCAB.read_text().splitlines())
  c.data.tokenizer_path = str(TINY_VOCAB)
  c.model.embed_dim = 128
  c.model.bert.update(dict(vocab_size=vocab, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
                           max_position_embeddings=64))
  c.model.vit.update(dict(patch_size=8, hidden_size=128, num_layers=2, num_heads=4, mlp_dim=512))
  c.model.resnet.update(dict(embedding_size=16, hidden_sizes=(32, 64, 128, 256), depths=(1, 1, 1, 1)))
  c.optim.lr = 1e-3
  c.optim.param_groups = optim.PAPER_GROUPS[:1]  # only the BatchNorm statistics stay fixed
  c.schedule.milestones = (8, 10)
