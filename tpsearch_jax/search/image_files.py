"""The image files of a gallery folder: which files are images, and their (size, mtime) to tell changed ones."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def inside(path: str, root: str) -> bool:
  """True when ``path`` resolves (symlinks followed) to a location inside the folder ``root``."""
  real, base = os.path.realpath(path), os.path.realpath(root)
  return os.path.commonpath([real, base]) == base


def find_images(root: str) -> list[str]:
  """Sorted absolute paths of the image files under ``root`` (recursive); symlinks leading out of it are skipped."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images={root}: not a folder")
  found, outside = [], []
  for folder, _, files in os.walk(root):
    for f in files:
      if f.lower().endswith(IMAGE_EXTENSIONS):
        p = os.path.abspath(os.path.join(folder, f))
        (found if inside(p, root) else outside).append(p)
  if outside:
    logging.warning("skipped %d symlink(s) leading out of %s; first: %s", len(outside), root, outside[:3])
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return sorted(found)


def file_stats(paths: Sequence[str]) -> np.ndarray:
  """int64 [n, 2]: (size, mtime_ns) per path."""
  out = np.zeros((len(paths), 2), np.int64)
  for i, p in enumerate(paths):
    st = os.stat(p)
    out[i] = st.st_size, st.st_mtime_ns
  return out
