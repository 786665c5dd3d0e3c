"""Loading a dataset by its data section: ``load_annotations(config_data, splits)`` reads (synthetic_pedes: first
generates) the annotations and fully decodes every image of ``splits`` (``image_check``), before anything is built or
compiled.

No TensorFlow. On several hosts, process 0 generates synthetic_pedes and the others wait (and write their own copy
when the folder is not shared).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
from jax.experimental import multihost_utils

from tpsearch_jax.data import annotations as ann_lib
from tpsearch_jax.data import image_check, synthetic

log = logging.getLogger(__name__)

HOW_TO_GET = {
    "cuhk_pedes": "CUHK-PEDES: request the images from the dataset authors (see the ShuangLI59/Person-Search-with-"
                  "Natural-Language-Description README; academic use only) and place reid_raw.json beside imgs/.",
    "icfg_pedes": "ICFG-PEDES: request it from the SSAN authors (zifyloo/SSAN README); place ICFG-PEDES.json beside "
                  "imgs/.",
    "rstp_reid": "RSTPReid: download from the NjtechCVLab/RSTPReid-Dataset README links; place data_captions.json "
                 "beside imgs/.",
    "synthetic_pedes": "synthetic_pedes: generated automatically on first use (python -m tpsearch_jax.data.synthetic).",
}


def load_annotations(config_data, splits: Sequence[str]) -> ann_lib.Annotations:
  """config_data: the run's data section (``Options.data``) → Annotations whose images of ``splits`` all decode.

  A missing or malformed dataset raises AnnotationError naming the folder and how to get the data; a missing or
  undecodable image raises ImageDecodeError naming it and its split, or is dropped with its captions by
  data.skip_missing / data.skip_corrupt (counted in ``Annotations.skipped``). With data.use_tfds the images are
  checked by the pipeline instead (they come from the records); data.verify_images=False skips the decode check.
  """
  root = os.path.abspath(os.path.expanduser(config_data.root))
  if config_data.name == "synthetic_pedes":
    args = dict(config_data.synthetic)
    if jax.process_index() == 0:
      synthetic.ensure(root, **args)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("synthetic_pedes ready")
      if not os.path.isfile(os.path.join(root, "reid_raw.json")):
        synthetic.ensure(root, **args)  # not a shared file system: every host writes its own (identical) copy
  try:
    # With prepared TFDS records the images are read from the records, not from imgs/ (checked by the pipeline).
    ann = ann_lib.read_annotations(config_data.name, root, check_images=not config_data.use_tfds,
                                   skip_missing=bool(config_data.skip_missing or config_data.skip_corrupt))
  except (ann_lib.AnnotationError, FileNotFoundError) as e:
    raise ann_lib.AnnotationError(
        f"{e}\nLooked in {root} (config.data.root). {HOW_TO_GET.get(config_data.name, '')} "
        f"Point --config.data.root at the dataset folder.") from e
  if config_data.verify_images and not config_data.use_tfds:
    ann = decode_check(ann, config_data, splits)
  return ann


def decode_check(ann: ann_lib.Annotations, config_data, splits: Sequence[str]) -> ann_lib.Annotations:
  """Fully decodes every image of ``splits`` once (cached); -> ``ann`` without the images the skip rule drops."""
  cache, dropped = image_check.cache_for(config_data), {}
  for split in splits:
    paths = [r.image_path for r in ann.images(split)]
    what = f"{ann.spec.display_name} {split} split"
    result = image_check.check_images(paths, lambda p: p if os.path.isfile(p) else None,
                                      fingerprint=image_check.file_fingerprint, cache=cache, what=what)
    skip = image_check.skip_rule(result, config_data, what)
    if skip:
      captions = sum(len(r.captions) for r in ann.images(split) if r.image_path in skip)
      log.warning("%s: skipping %d images (%s) and their %d captions: %s", what, len(skip),
                  ", ".join(f"{k}: {v}" for k, v in image_check.count_kinds(skip).items()), captions,
                  result.message())
    dropped |= skip
  return ann.without(dropped) if dropped else ann
