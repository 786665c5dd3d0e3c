"""The package's layers point down: a check over the import graph of tpsearch_jax (every import statement, module
level or inside a function), read with ``ast``.

Bottom to top: the contracts (``user_errors``, ``batch``, ``sharding``, ``config_files``); the math (``losses``,
``ranking_losses``, ``loss_inputs``, ``masked_mlm``, ``metrics``, ``binding``); ``objectives``; ``models``; the data side
(``data``) and
the training library (``training``), ``evaluate``, ``evaluate_binding``; the config layer (``configs``: method recipes, the base config); the orchestrators
(``training.trainer`` / ``setup`` / ``eval_only``, ``search``, ``bench``, ``study``, ``main``, ``benchmark``).
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from tpsearch_jax import batch
from tpsearch_jax.models.clip import tokenizer

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tpsearch_jax"
ORCHESTRATORS = (r"tpsearch_jax\.(main|benchmark|cli_help|search|bench|study)\b"
                 r"|tpsearch_jax\.training\.(trainer|setup|eval_only)\b")
TF = r"(tensorflow|tensorflow_datasets)\b|tpsearch_jax\.data\.(pipeline|tfds_builders)\b"
# The network modules of models/: towers, blocks, heads, weight import. retrieval.py (the model that reads the batch
# contract and builds the heads the objectives ask for) and the method layer (presets, registry, the package
# __init__) may also use ``batch`` and ``objectives``.
NETWORKS = r"tpsearch_jax\.models\.(?!retrieval$|presets$|registry$)\w+"

# (importer regex, forbidden imported-module regex, why)
RULES = [
    (r"tpsearch_jax\.models\b", r"tpsearch_jax\.(training|configs|data|evaluate|metrics|flops)\b|" + ORCHESTRATORS,
     "models know nothing about optimizers, schedules, recipes, data pipelines or training"),
    (NETWORKS, r"tpsearch_jax\.(objectives|batch|losses|ranking_losses|loss_inputs|masked_mlm)\b",
     "the networks know nothing about objectives or batches"),
    (r"tpsearch_jax\.(batch|user_errors|sharding|config_files)$", r"tpsearch_jax\.(?!user_errors$)",
     "the contracts import nothing of the package (user_errors aside)"),
    (r"tpsearch_jax\.(losses|ranking_losses|loss_inputs|masked_mlm|metrics|binding|objectives)$",
     r"tpsearch_jax\.(models|training|configs|data|evaluate|batch)\b|" + ORCHESTRATORS,
     "the math and the objectives sit below the models"),
    (r"tpsearch_jax\.data\b", r"tpsearch_jax\.(training|configs|evaluate|objectives)\b|" + ORCHESTRATORS,
     "data reads files and makes batches; it knows nothing of training"),
    (r"tpsearch_jax\.(training|evaluate|evaluate_binding)\b", r"tpsearch_jax\.configs\b",
     "the training library takes a config; it does not build one"),
    (r"tpsearch_jax\.(?!(main|benchmark|cli_help)$|search\b|bench\b|study\b|training\.(trainer|setup|eval_only)$)\w+",
     ORCHESTRATORS, "the library never imports an orchestrator"),
    (r"tpsearch_jax\.(search|bench|models|evaluate|evaluate_binding|metrics|binding|objectives|losses|ranking_losses"
     r"|loss_inputs)\b"
     r"|tpsearch_jax\.training\.(state|optim|checkpointing|runs|resume_checks|config_checks|progress)$",
     TF, "TensorFlow stays on the data side"),
]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  """tpsearch_jax/models/clip/model.py → "tpsearch_jax.models.clip.model" (a package → its __init__'s name)."""
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(root: pathlib.Path) -> list[tuple[str, str, int]]:
  """Every import under ``root``: [(importer, imported module, line)]; ``from a import b`` names module a.b when b is
  a module of the tree, else a."""
  files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
  edges = []
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges += [(name, alias.name, node.lineno) for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([node.module] if node.module else []))
        for alias in node.names:
          full = f"{base}.{alias.name}"
          edges.append((name, full if full in files else base, node.lineno))
  return edges


def violations(root: pathlib.Path, rules=RULES) -> list[str]:
  """"importer:line imports target (why)" for every edge a rule forbids."""
  out = []
  for importer, target, line in import_edges(root):
    for source, forbidden, why in rules:
      if re.match(source + r"(\.|$)", importer) and re.match(forbidden, target):
        out.append(f"{importer}:{line} imports {target} ({why})")
  return sorted(set(out))


def test_layers_only_point_down():
  assert violations(PACKAGE) == []


def test_the_check_sees_a_model_importing_training(tmp_path):
  """A planted upward import (a model module importing training, inside a function) is reported."""
  pkg = tmp_path / "tpsearch_jax"
  (pkg / "models").mkdir(parents=True)
  (pkg / "training").mkdir()
  for f in ("__init__.py", "models/__init__.py", "training/__init__.py", "training/optim.py", "batch.py"):
    (pkg / f).write_text("")
  (pkg / "models" / "towers.py").write_text("import jax\n\ndef f():\n  from tpsearch_jax.training import optim\n")
  (pkg / "models" / "heads.py").write_text("from .. import batch\n")
  assert violations(pkg) == [
      "tpsearch_jax.models.heads:1 imports tpsearch_jax.batch (the networks know nothing about objectives or batches)",
      "tpsearch_jax.models.towers:4 imports tpsearch_jax.training.optim (models know nothing about optimizers, "
      "schedules, recipes, data pipelines or training)"]


@pytest.mark.parametrize("importer,target", [
    ("tpsearch_jax.batch", "tpsearch_jax.models.clip.tokenizer"),
    ("tpsearch_jax.models.presets", "tpsearch_jax.training.optim"),
    ("tpsearch_jax.models.backbones", "tpsearch_jax.training"),
    ("tpsearch_jax.training.state", "tpsearch_jax.configs.recipes"),
    ("tpsearch_jax.search.indexing", "tpsearch_jax.data.pipeline.training"),
    ("tpsearch_jax.evaluate", "tpsearch_jax.bench.flops"),
])
def test_each_known_upward_import_is_forbidden(importer, target):
  hits = [why for source, forbidden, why in RULES
          if re.match(source + r"(\.|$)", importer) and re.match(forbidden, target)]
  assert hits, f"{importer} → {target} passes every rule"


def test_the_batch_contract_spells_the_clip_special_ids():
  assert (batch.SOT_ID, batch.EOT_ID, batch.MASK_ID) == (tokenizer.SOT_ID, tokenizer.EOT_ID, tokenizer.MASK_ID)
