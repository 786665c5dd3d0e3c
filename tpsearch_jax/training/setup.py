"""What training and eval-only runs share: the run's options (read once from the resolved config), annotations,
mesh, model, abstract state, eval data and the query subsets reported beside the test split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from tpsearch_jax import evaluate as eval_lib
from tpsearch_jax import evaluate_binding
from tpsearch_jax import sharding as shd
from tpsearch_jax.data import datasets
from tpsearch_jax.data.annotations import SPLITS
from tpsearch_jax.data.pipeline import evaluation as eval_pipeline
from tpsearch_jax.data.pipeline import training as train_pipeline
from tpsearch_jax.data.synthetic import hard_subset
from tpsearch_jax.models.clip.weights import load_clip_params
from tpsearch_jax.models import CLIPConfig, backbones, build_model
from tpsearch_jax.training import init_from_run, optim
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.config_checks import check_parallelism, fill_num_classes, warn_if_test_selection
from tpsearch_jax.training.options import Options, run_options
from tpsearch_jax.user_errors import UserError

# config.eval.subsets: name → (the dataset that defines it, (dataset root, EvalSplit) → query indices of the split).
QUERY_SUBSETS = {"hard": ("synthetic_pedes", hard_subset.hard_queries)}
SUBSETS_DEFAULT = ("hard",)  # for configs written before config.eval.subsets existed


@dataclasses.dataclass
class Setup:
  """config: the resolved config (``model.num_classes`` filled); options: ``run_options(config)``, what the library
  functions are given."""

  config: ml_collections.ConfigDict
  options: Options
  ann: Any
  mesh: Any
  model: Any
  steps_per_epoch: int
  abstract: Any
  tx: Any
  shardings: Any
  train_data: Any = None  # train_pipeline.TrainPipeline (training runs only)
  _eval_data: dict = dataclasses.field(default_factory=dict)  # split → (image batches, text batches), re-iterable
  _evaluator: Any = None
  _subsets: dict = dataclasses.field(default_factory=dict)  # name → query indices of the test split

  @property
  def evaluator(self) -> eval_lib.Evaluator:
    """One Evaluator (its jitted encoders compile once) for every evaluation of the run."""
    if self._evaluator is None:
      self._evaluator = eval_lib.Evaluator(self.model, self.mesh, self.shardings.params,
                                           block_size=int(self.config.eval.block_size))
    return self._evaluator

  def eval_batches(self, split: str):
    """(image batches, text batches) of ``split`` for this process (padded, with "valid" masks); built once."""
    if split not in self._eval_data:
      self._eval_data[split] = eval_pipeline.eval_datasets(
          self.ann.split(split), self.options.data, int(self.config.eval.batch_size),
          process_index=jax.process_index(), process_count=jax.process_count())
    return self._eval_data[split]

  def evaluate(self, params, splits, step: int, checkpoint: str, epoch: int | None = None) -> dict[str, dict]:
    """{split: metrics row} of ``params`` on ``splits`` (+ "test_<name>" per query subset: ``query_subsets``; the
    test row of a part model on synthetic_pedes gets "binding": ``evaluate_binding.binding_report``)."""
    rows = eval_lib.evaluate_splits(self.evaluator, params, self.eval_batches, splits, step, checkpoint, epoch,
                                    query_subsets={s: self.query_subsets(s) for s in splits})
    o = self.options
    if "test" in rows and evaluate_binding.applies(o.model, o.data):  # part models on synthetic_pedes
      rows["test"]["binding"] = evaluate_binding.binding_report(self.model, params, o.clip, o.model, o.data,
                                                                self.ann)
    return rows

  def skipped(self, splits) -> dict[str, dict[str, int]]:
    """{split: {"missing", "corrupt", "captions_dropped"}} the skip rule dropped, for train (if training) and
    ``splits``."""
    return train_pipeline.skipped_by_split(self.train_data, {sp: self.eval_batches(sp) for sp in splits})

  def query_subsets(self, split: str) -> dict:
    """{name: query indices} reported beside ``split``: the test split's ``config.eval.subsets`` that its dataset
    defines (``QUERY_SUBSETS``; synthetic_pedes: "hard", ``hard_subset.hard_queries``), each computed once."""
    if split != "test":
      return {}
    out = {}
    for name in subset_names(self.config):
      dataset, queries = QUERY_SUBSETS[name]
      if dataset != self.options.data.name:
        continue
      if name not in self._subsets:
        self._subsets[name] = queries(self.ann.root, self.ann.split(split))
      if len(self._subsets[name]):  # tiny splits may have none
        out[name] = self._subsets[name]
    return out


def subset_names(config) -> tuple[str, ...]:
  """``config.eval.subsets`` (``SUBSETS_DEFAULT`` when the config predates the field); raises on an unknown name."""
  names = tuple(config.eval.get("subsets", SUBSETS_DEFAULT) or ())
  unknown = [n for n in names if n not in QUERY_SUBSETS]
  if unknown:
    raise UserError(f"config.eval.subsets names unknown subset(s) {unknown}; known: {sorted(QUERY_SUBSETS)}")
  return names


def build_setup(config, *, train: bool, devices: Sequence[jax.Device] | None = None) -> Setup:
  """Reads the data of ``config`` (resolved: ``config_checks.resolve_config``; for training, screens it and sizes
  the epoch), fills ``model.num_classes`` from it, reads the run's ``Options`` once, builds the model and the
  abstract state on a mesh over ``devices`` (default: every device). Writes no file (``write_config`` does, once a
  run is known to start or resume legitimately)."""
  subset_names(config)  # cheap checks before touching the data
  # Read before the options: the train split decides num_classes (in eval-only runs too).
  ann = datasets.load_annotations(ml_collections.FrozenConfigDict(config.data), run_splits(config))
  config = fill_num_classes(config, ann.num_classes)
  options = run_options(config)
  warn_if_test_selection(config)
  if config.eval.select_on == "val" and not ann.spec.has_val:
    raise UserError(f"{ann.spec.display_name} has no val split: set --config.eval.select_on=none or =test")
  mesh = shd.run_mesh(options.mesh_sizes, options.fsdp, devices)
  check_parallelism(config, mesh)
  logging.info("Mesh %s over %d devices (%d processes); params over %s; backend %s; compute dtype %s",
               dict(mesh.shape), mesh.size, jax.process_count(),
               shd.param_axes(mesh, options.fsdp) or "no axis (replicated)", jax.default_backend(),
               config.model.dtype)
  model = build_model(options)
  train_data, steps_per_epoch = None, 1
  if train:
    train_data = train_pipeline.TrainPipeline(
        ann.train, options.data, int(config.train.batch_size), int(config.seed),
        process_index=jax.process_index(), process_count=jax.process_count())
    steps_per_epoch = train_data.steps_per_epoch
  abstract, tx, shardings = state_lib.abstract_train_state(options, model, mesh, steps_per_epoch=steps_per_epoch)
  if train:
    logging.info("Parameter groups (config.optim.param_groups):\n%s", optim.group_table(abstract.params, options.optim))
  setup = Setup(config, options, ann, mesh, model, steps_per_epoch, abstract, tx, shardings, train_data)
  if config.data.use_tfds:  # the record images are checked as each eval pipeline is built: build them now
    for split in run_splits(config) if train else config.eval.splits:
      if split != "train":
        setup.eval_batches(split)
  return setup


def run_splits(config) -> tuple[str, ...]:
  """The splits a training run reads: train, ``config.eval.splits`` and ``config.eval.select_on`` (unless "none")."""
  wanted = ("train", *config.eval.splits, config.eval.select_on)
  return tuple(s for s in dict.fromkeys(wanted) if s in SPLITS)


def write_config(config, path: str) -> None:
  """The resolved ``config`` as JSON at ``path`` (process 0; its folder is made)."""
  if jax.process_index() == 0:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(config.to_json_best_effort(indent=2))


def pretrained_clip_params(init, clip: CLIPConfig):
  """``init.clip`` (``config.init``) → numpy ``params["clip"]`` tree for the CLIP architecture ``clip``, or None."""
  if not init.clip:
    return None
  logging.info("Initialising params['clip'] from %s", init.clip)
  return load_clip_params(init.clip, clip)


def pretrained_backbone_params(init, options: Options) -> dict:
  """``init.bert`` / ``vit`` / ``resnet`` (``config.init``) → {"text_backbone", "image_backbone"} numpy subtrees of
  the paper backbones of ``options`` ({} for CLIP)."""
  backbone = options.model.backbone
  if backbone == "clip":
    unused = [f for f in ("bert", "vit", "resnet") if init.get(f)]
    if unused:
      raise UserError(f"config.init.{unused[0]} is set but config.model.backbone='clip' (use config.init.clip)")
    return {}
  if init.get("clip"):
    raise UserError(f"config.init.clip is set but config.model.backbone={backbone!r}: use config.init.bert "
                     "and config.init.vit / config.init.resnet")
  found = backbones.pretrained_params(init, options.clip, options.model)
  for key, field in (("text_backbone", "bert"), ("image_backbone", "vit/resnet")):
    logging.info("Initialising params['%s'] from config.init.%s" if key in found else
                 "params['%s'] random (config.init.%s not set)", key, field)
  return found


def has_pretrained(config) -> bool:
  """Whether any ``config.init`` weight path is set."""
  return any(config.init.get(f) for f in ("clip", "bert", "vit", "resnet", "run"))


def init_run_spec(init) -> str | None:
  """``init.run`` (``config.init``: "WORKDIR[:STEP]") or None; raises when it is set together with init.clip / bert
  / vit / resnet."""
  if not init.get("run"):
    return None
  if any(init.get(f) for f in ("clip", "bert", "vit", "resnet")):
    raise UserError("config.init.run is set together with config.init.clip/bert/vit/resnet: choose one")
  return str(init.run)


def initial_state(s: Setup):
  """A freshly initialised TrainState (with the ``config.init.*`` weights that are set; ``init.run`` last)."""
  init = s.config.init
  run_spec = init_run_spec(init)
  state, _, _ = state_lib.create_train_state(s.options, s.model, s.mesh, jax.random.PRNGKey(int(s.config.seed)),
                                             steps_per_epoch=s.steps_per_epoch,
                                             clip_params=pretrained_clip_params(init, s.options.clip),
                                             pretrained=pretrained_backbone_params(init, s.options))
  if run_spec:  # the matching params of another run of this project (training/init_from_run.py)
    state = init_from_run.initialise_from_run(state, run_spec, init.get("run_exclude"), s.mesh, s.tx, s.shardings)
  return state
