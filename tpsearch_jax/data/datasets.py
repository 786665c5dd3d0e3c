"""Loading a dataset by config: ``load_annotations(config)`` reads (synthetic_pedes: first generates) the annotations.

No TensorFlow. On several hosts, process 0 generates synthetic_pedes and the others wait (and write their own copy
when the folder is not shared).
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from tpsearch_jax.data import annotations as ann_lib
from tpsearch_jax.data import synthetic

HOW_TO_GET = {
    "cuhk_pedes": "CUHK-PEDES: request the images from the dataset authors (see the ShuangLI59/Person-Search-with-"
                  "Natural-Language-Description README; academic use only) and place reid_raw.json beside imgs/.",
    "icfg_pedes": "ICFG-PEDES: request it from the SSAN authors (zifyloo/SSAN README); place ICFG-PEDES.json beside "
                  "imgs/.",
    "rstp_reid": "RSTPReid: download from the NjtechCVLab/RSTPReid-Dataset README links; place data_captions.json "
                 "beside imgs/.",
    "synthetic_pedes": "synthetic_pedes: generated automatically on first use (python -m tpsearch_jax.data.synthetic).",
}


def dataset_root(config) -> str:
  """``config.data.root`` as an absolute path."""
  return os.path.abspath(os.path.expanduser(config.data.root))


def load_annotations(config) -> ann_lib.Annotations:
  """config.data → Annotations; a missing or malformed dataset raises AnnotationError naming the folder and how to
  get the data."""
  d = config.data
  root = dataset_root(config)
  if d.name == "synthetic_pedes":
    args = dict(d.synthetic)
    if jax.process_index() == 0:
      synthetic.ensure(root, **args)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("synthetic_pedes ready")
      if not os.path.isfile(os.path.join(root, "reid_raw.json")):
        synthetic.ensure(root, **args)  # not a shared file system: every host writes its own (identical) copy
  try:
    # With prepared TFDS records the images are read from the records, not from imgs/ (checked by the pipeline).
    return ann_lib.read_annotations(d.name, root, check_images=not d.use_tfds, skip_missing=bool(d.skip_missing))
  except (ann_lib.AnnotationError, FileNotFoundError) as e:
    raise ann_lib.AnnotationError(
        f"{e}\nLooked in {root} (config.data.root). {HOW_TO_GET.get(d.name, '')} "
        f"Point --config.data.root at the dataset folder.") from e
