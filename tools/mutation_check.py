"""Shows that the tests bite: applies hand-made, plausible bugs one at a time to a temporary copy of the package and
runs the tests that should notice each; prints caught / MISSED per mutation.

Each mutation replaces one exact snippet of one source file (the snippet must occur exactly once, so a mutation
that no longer applies is reported instead of silently testing nothing). The repository is never edited: the copy
(tpsearch_jax/, tests/, configs/, pyproject.toml) lives in a temporary folder that comes first on PYTHONPATH.

    python tools/mutation_check.py               # every mutation
    python tools/mutation_check.py --baseline    # first the selected tests on the unmutated copy (must pass)
    python tools/mutation_check.py --only efa_given_cls_token,resume_one_step_late
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("tpsearch_jax", "tests", "configs", "pyproject.toml")

WIRING = "tests/test_loss_wiring.py::test_preset_terms_equal_the_reference_on_the_documented_pieces"
RESUME = "tests/test_train.py::test_resume_inside_an_epoch_after_sigterm_and_after_a_kill_equals_the_uninterrupted_run"
PADDED = "tests/test_loss_masks.py::test_compute_losses_on_a_padded_batch_equals_the_unpadded_batch"
REFUSAL = "tests/test_loss_masks.py::test_a_masked_batch_is_refused_when_an_active_term_does_not_honour_the_mask"


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # relative to the repository
  old: str
  new: str
  tests: tuple[str, ...]  # pytest node ids / files, relative to the repository


MUTATIONS = (
    Mutation("efa_margins_swapped", "tpsearch_jax/objectives.py",
             "margin_t2e=loss.efa_margin_t2e,\n                                   margin_i2e=loss.efa_margin_i2e",
             "margin_t2e=loss.efa_margin_i2e,\n                                   margin_i2e=loss.efa_margin_t2e",
             (f"{WIRING}[fmfa]",)),
    Mutation("efa_given_cls_token", "tpsearch_jax/objectives.py",
             '_f32(img["tokens"][:, 1:])', '_f32(img["tokens"])', (f"{WIRING}[fmfa]",)),
    Mutation("efa_text_mask_ignored", "tpsearch_jax/objectives.py",
             'mask = (batch["caption_ids"] != 0) if loss.efa_mask_padding else None', "mask = None",
             ("tests/test_loss_wiring.py::test_option_variants_equal_the_reference[efa_mask]",)),
    Mutation("cmr_first_instead_of_last_part_logits", "tpsearch_jax/objectives.py",
             "(img_logits[:, -num_parts:], txt_logits[:, -num_parts:])",
             "(img_logits[:, :num_parts], txt_logits[:, :num_parts])", (f"{WIRING}[pcc]",)),
    Mutation("triplet_ranks_parts_not_coarse", "tpsearch_jax/objectives.py",
             'ranked_v.append(img["coarse"])\n    ranked_t.append(txt["coarse"])',
             'ranked_v.append(img["part"])\n    ranked_t.append(txt["part"])', (f"{WIRING}[pcc]",)),
    Mutation("id_pieces_option_inverted", "tpsearch_jax/objectives.py",
             'txt_logits[:, :1]) if loss.id_pieces == "global"', 'txt_logits[:, :1]) if loss.id_pieces != "global"',
             (f"{WIRING}[pcc]",)),
    Mutation("asdm_alpha_not_passed", "tpsearch_jax/objectives.py",
             "logit_scale=loss.logit_scale, alpha=loss.asdm_alpha,", "logit_scale=loss.logit_scale,",
             (f"{WIRING}[fmfa_paper]",)),
    Mutation("efa_valid_mask_dropped", "tpsearch_jax/objectives.py",
             "arithmetic=loss.efa_arithmetic, valid=valid)", "arithmetic=loss.efa_arithmetic)", (PADDED,)),
    Mutation("mlm_padding_labels_kept", "tpsearch_jax/objectives.py",
             "mlm_labels = jnp.where(valid[:, None], mlm_labels, 0)", "mlm_labels = mlm_labels", (PADDED,)),
    Mutation("valid_mask_refusal_disabled", "tpsearch_jax/objectives.py", "    if unmasked:\n", "    if False:\n",
             (REFUSAL,)),
    Mutation("asdm_weight_detached", "tpsearch_jax/losses.py",
             "w_i2t = 1.0 + alpha * gap_of(c.T)\n  w_t2i = 1.0 + alpha * gap_of(c)",
             "w_i2t = jax.lax.stop_gradient(1.0 + alpha * gap_of(c.T))\n"
             "  w_t2i = jax.lax.stop_gradient(1.0 + alpha * gap_of(c))",
             ("tests/test_loss_gradients.py::test_asdm_gradient_flows_through_its_weight",)),
    Mutation("cmr_commonality_not_stop_gradient", "tpsearch_jax/ranking_losses.py",
             "return jax.lax.stop_gradient(score)", "return score",
             ("tests/test_loss_gradients.py::test_cmr_gradient_holds_the_commonality_score_constant",)),
    Mutation("efa_hinge_sign_flipped", "tpsearch_jax/losses.py",
             "g = jnp.where(eye, 0.0, s - d[:, None] + margin)", "g = jnp.where(eye, 0.0, d[:, None] - s + margin)",
             ("tests/test_losses.py::test_efa_matches_reference", "tests/test_loss_gradients.py::test_efa_gradients")),
    Mutation("cmr_similarity_transposed", "tpsearch_jax/ranking_losses.py",
             "    s = _cosine_eps(v, t)\n    return (_directional_ranking(s, pids, k_img, margin, mi, valid)",
             "    s = _cosine_eps(t, v)\n    return (_directional_ranking(s, pids, k_img, margin, mi, valid)",
             ("tests/test_losses.py::test_cmr_matches_reference",)),
    Mutation("stripes_in_reverse_order", "tpsearch_jax/models/part_decoder.py",
             "for a, b in stripe_bounds(gh, parts)], axis=1)", "for a, b in stripe_bounds(gh, parts)[::-1]], axis=1)",
             ("tests/test_models.py::test_foreground_map_and_image_parts_match_numpy",)),
    Mutation("resume_one_step_late", "tpsearch_jax/training/trainer.py",
             'step = int(meta["step"])', 'step = int(meta["step"]) + 1', (RESUME,)),
    Mutation("resume_at_the_start_of_the_epoch", "tpsearch_jax/training/trainer.py",
             'step = int(meta["step"])', 'step = int(meta["epoch"]) * s.steps_per_epoch', (RESUME,)),
    Mutation("study_std_without_ddof", "tpsearch_jax/study/paired.py", "v.std(ddof=1)", "v.std()",
             ("tests/test_study.py::test_summary_table_is_mean_and_sample_std_over_seeds",)),
    Mutation("galleries_sem_over_every_gallery", "tpsearch_jax/study/galleries.py",
             "np.sqrt(independent)", "np.sqrt(len(rows))",
             ("tests/test_galleries.py::test_per_gallery_metrics_and_standard_error_match_brute_force",)),
)


def make_copy(root: str) -> None:
  for name in COPIED:
    src, dst = os.path.join(REPO, name), os.path.join(root, name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    else:
      shutil.copy2(src, dst)


def apply(root: str, m: Mutation) -> None:
  path = os.path.join(root, m.path)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if text.count(m.old) != 1:
    raise ValueError(f"{m.name}: the snippet occurs {text.count(m.old)} times in {m.path} (must be once)")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace(m.old, m.new))


def run_tests(root: str, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
  """pytest on ``tests`` in the copy (8 virtual CPU devices) → (return code, last summary line)."""
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
  try:
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return -1, f"timed out after {timeout} s"
  lines = [ln for ln in out.stdout.splitlines() if re.search(r"\b(passed|failed|error|no tests ran)\b", ln)]
  failed = [ln.split(" - ")[0] for ln in out.stdout.splitlines() if ln.startswith("FAILED ")]
  return out.returncode, (failed[0] + "; " if failed else "") + (lines[-1].strip() if lines else out.stderr[-300:])


def check_import(root: str) -> None:
  env = dict(os.environ, PYTHONPATH=root)
  where = subprocess.run([sys.executable, "-c", "import tpsearch_jax; print(tpsearch_jax.__file__)"], cwd=root,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
  if not where.startswith(os.path.realpath(root)) and not where.startswith(root):
    raise RuntimeError(f"the copy is not what the tests import: tpsearch_jax from {where}")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--only", default="", help="comma-separated mutation names")
  ap.add_argument("--baseline", action="store_true", help="first run the selected tests on the unmutated copy")
  ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
  args = ap.parse_args(argv)
  chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
  if args.only and len(chosen) != len(args.only.split(",")):
    ap.error(f"unknown mutation in --only; known: {', '.join(m.name for m in MUTATIONS)}")
  if args.baseline:
    with tempfile.TemporaryDirectory(prefix="mutation_base_") as root:
      make_copy(root)
      check_import(root)
      tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
      rc, line = run_tests(root, tests, args.timeout * 2)
      print(f"baseline (unmutated): {'pass' if rc == 0 else 'FAIL'} ({line})", flush=True)
      if rc != 0:
        return 2
  missed = 0
  for m in chosen:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutation_") as root:
      make_copy(root)
      check_import(root)
      try:
        apply(root, m)
      except ValueError as e:  # the source moved on: the mutation must be updated, it tested nothing
        rc, line = None, str(e)
      else:
        rc, line = run_tests(root, m.tests, args.timeout)
    verdict = ("caught" if rc == 1 else "MISSED" if rc == 0 else "NOT APPLIED" if rc is None
               else f"ERROR (pytest rc {rc})")
    missed += verdict != "caught"
    print(f"{m.name:38s} {verdict:8s} {time.monotonic() - start:5.0f} s  {m.path}  ({line})", flush=True)
  print(f"{len(chosen) - missed} of {len(chosen)} mutations caught")
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main())
