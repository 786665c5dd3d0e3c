"""The per-image nuisances of synthetic_pedes: a ``Shot`` holds everything that varies between images of one
identity (camera/background, view, pose, framing, lighting, blur, occlusion), drawn by ``sample_shot``;
``visible_parts`` says what an observer of that image can see. The renderer (``render``) draws a person under it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_CAMERAS = 4  # street, shopping mall, park, station


@dataclasses.dataclass(frozen=True)
class Shot:
  """Per-image nuisance: everything but the identity."""

  camera: int
  view: str  # "front" | "back"
  scale: float  # person height / image height
  cx: float  # horizontal centre, fraction of width
  top: float  # head top, fraction of height
  arm_angles: tuple[float, float]  # outward angle of each upper arm from vertical, degrees
  elbow_bends: tuple[float, float]
  leg_spread: float  # outward angle of each leg, degrees
  lifted_foot: int  # -1 / +1: which foot is raised
  foot_lift: float  # in body units
  bag_side: int  # -1 / +1 (image left / right)
  brightness: float
  tint: tuple[float, float, float]
  gradient: float  # vertical lighting gradient
  blur: float  # Gaussian radius in output pixels (0 = sharp)
  noise: float  # pixel noise std
  occluder: str | None  # None | "low" | "left" | "right"
  occluder_extent: float  # fraction of height (low) or width (left/right)
  quality: int  # JPEG quality
  colour_jitter: int  # per-image dye/camera shift of garment colours
  seed: int  # background / detail randomness


def sample_shot(rng: np.random.Generator, camera: int) -> Shot:
  """Draws one image's nuisance parameters."""
  scale = float(rng.uniform(0.74, 0.94))
  occ = rng.random()
  occluder = None if occ > 0.2 else ("low" if occ < 0.12 else ("left" if rng.random() < 0.5 else "right"))
  return Shot(
      camera=camera,
      view="front" if rng.random() < 0.6 else "back",
      scale=scale,
      cx=float(rng.uniform(0.42, 0.58)),
      top=float(rng.uniform(0.01, max(0.015, 0.985 - scale))),
      arm_angles=(float(rng.uniform(3, 22)), float(rng.uniform(3, 22))),
      elbow_bends=(float(rng.uniform(0, 25)), float(rng.uniform(0, 25))),
      leg_spread=float(rng.uniform(1, 9)),
      lifted_foot=int(rng.choice([-1, 1])),
      foot_lift=float(rng.uniform(0, 0.3)),
      bag_side=int(rng.choice([-1, 1])),
      brightness=float(rng.uniform(0.68, 1.2)),
      tint=tuple(float(t) for t in rng.uniform(0.9, 1.1, size=3)),
      gradient=float(rng.uniform(-0.25, 0.25)),
      blur=float(rng.uniform(0.3, 1.1)) if rng.random() < 0.35 else 0.0,
      noise=float(rng.uniform(1.0, 6.0)),
      occluder=occluder,
      occluder_extent=float(rng.uniform(0.16, 0.26) if occluder == "low" else rng.uniform(0.16, 0.3)),
      quality=int(rng.integers(80, 96)),
      colour_jitter=int(rng.integers(0, 10)),
      seed=int(rng.integers(2**31)),
  )


def visible_parts(attrs: dict, shot: Shot) -> set[str]:
  """Parts an observer of this image can see (captions only describe these): the face needs a front view, the shoes
  disappear behind a low occluder, a handbag behind a side occluder on its side."""
  parts = {"hair", "hat", "upper", "lower", "shoes", "bag"}
  if shot.view == "front":
    parts |= {"glasses", "logo"}
  if shot.occluder == "low":
    parts.discard("shoes")
  side = -1 if shot.occluder == "left" else 1
  if shot.occluder in ("left", "right") and attrs["bag.type"] == "handbag" and bag_image_side(shot) == side:
    parts.discard("bag")
  return parts


def bag_image_side(shot: Shot) -> int:
  """-1 / +1: the image side the bag hangs on (a back view mirrors it)."""
  return shot.bag_side if shot.view == "front" else -shot.bag_side
