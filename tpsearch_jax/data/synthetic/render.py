"""Procedural pedestrian renderer for synthetic_pedes (PIL drawing, supersampled, then camera nuisances).

The figure is drawn on a canvas ``SUPERSAMPLE`` times the output size in body units ``u`` (one eighth of the person's
height), then downsampled, lit, blurred, noised and JPEG-encoded. A ``Shot`` holds everything that varies between
images of one identity (camera/background, view, pose, framing, lighting, blur, occlusion; ``shots``); the
identity's attributes (``attributes.py``) decide what the person wears.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tpsearch_jax.data.synthetic.shots import Shot, bag_image_side

SUPERSAMPLE = 4

RGB = {
    "black": (30, 30, 34), "white": (236, 236, 230), "grey": (128, 128, 132), "blue": (45, 95, 200),
    "navy": (30, 40, 95), "red": (200, 35, 40), "green": (40, 135, 65), "yellow": (235, 205, 45),
    "pink": (240, 140, 180), "purple": (120, 55, 150), "orange": (240, 125, 35), "brown": (115, 72, 40),
    "beige": (215, 195, 155),
}
HAIR_RGB = {"black": (24, 22, 22), "brown": (100, 62, 35), "blonde": (222, 192, 118), "grey": (168, 168, 168),
            "red": (172, 68, 32)}
SKIN_RGB = ((250, 218, 192), (236, 192, 160), (216, 166, 130), (190, 140, 100), (150, 102, 70), (108, 74, 50))


def _shade(c, f: float):
  return tuple(int(max(0, min(255, round(v * f)))) for v in c)


def _mix(a, b, t: float):
  return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


class _Painter:
  """Body-unit drawing helpers on the supersampled canvas."""

  def __init__(self, size_hw: tuple[int, int], shot: Shot):
    self.h, self.w = size_hw[0] * SUPERSAMPLE, size_hw[1] * SUPERSAMPLE
    self.img = Image.new("RGB", (self.w, self.h))
    self.draw = ImageDraw.Draw(self.img)
    self.u = shot.scale * self.h / 8.0
    self.cx = shot.cx * self.w
    self.y0 = shot.top * self.h

  def p(self, x: float, y: float) -> tuple[float, float]:
    return (self.cx + x * self.u, self.y0 + y * self.u)

  def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    (a, b), (c, d) = self.p(x0, y0), self.p(x1, y1)
    return [min(a, c), min(b, d), max(a, c), max(b, d)]

  def ellipse(self, x: float, y: float, rx: float, ry: float, fill, draw=None) -> None:
    (draw or self.draw).ellipse(self.box(x - rx, y - ry, x + rx, y + ry), fill=fill)

  def poly(self, pts, fill, draw=None) -> None:
    (draw or self.draw).polygon([self.p(x, y) for x, y in pts], fill=fill)

  def limb(self, pts, width: float, fill, draw=None) -> None:
    """Thick polyline with round joints and caps; width in body units."""
    d = draw or self.draw
    px = [self.p(x, y) for x, y in pts]
    wpx = max(1, int(round(width * self.u)))
    d.line(px, fill=fill, width=wpx, joint="curve")
    for x, y in px:
      r = wpx / 2
      d.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _along(a, b, t: float):
  return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _skeleton(shot: Shot) -> dict:
  """Joint positions in body units (x from the body axis, y from the head top). Index 0 = image-left limb."""
  j = {}
  for i, s in enumerate((-1, 1)):
    a = math.radians(shot.arm_angles[i])
    b = math.radians(shot.arm_angles[i] - shot.elbow_bends[i])
    sh = (s * 0.74, 1.55)
    el = (sh[0] + s * 1.45 * math.sin(a), sh[1] + 1.45 * math.cos(a))
    wr = (el[0] + s * 1.3 * math.sin(b), el[1] + 1.3 * math.cos(b))
    j[f"arm{i}"] = (sh, el, wr)
    spread = math.radians(shot.leg_spread)
    lift = shot.foot_lift if shot.lifted_foot == s else 0.0
    hip = (s * 0.32, 4.0)
    knee = (hip[0] + s * 1.95 * math.sin(spread), 5.95 - lift / 2)
    ankle = (hip[0] + s * 3.7 * math.sin(spread), 7.7 - lift)
    j[f"leg{i}"] = (hip, knee, ankle)
  return j


def _garment_rgb(name: str, shot: Shot, rng: np.random.Generator):
  base = np.asarray(RGB[name], np.float64)
  return tuple(int(v) for v in np.clip(base + rng.integers(-shot.colour_jitter, shot.colour_jitter + 1, 3), 0, 255))


def _background(pt: _Painter, shot: Shot, rng: np.random.Generator) -> None:
  d, w, h = pt.draw, pt.w, pt.h
  horizon = h * rng.uniform(0.55, 0.72)
  j = lambda c, s=12: tuple(int(np.clip(v + rng.integers(-s, s + 1), 0, 255)) for v in c)  # noqa: E731
  if shot.camera == 0:  # street: facade with windows, pavement
    wall = j([(150, 80, 65), (200, 185, 160), (150, 150, 150), (120, 110, 100)][rng.integers(4)])
    d.rectangle([0, 0, w, horizon], fill=wall)
    ww, wh = w * rng.uniform(0.18, 0.28), h * rng.uniform(0.07, 0.1)
    for row in range(int(horizon // (wh * 1.8)) + 1):
      for col in range(4):
        x, y = col * ww * 1.6 + rng.uniform(-3, 3) - ww * 0.3, row * wh * 1.8 + wh * 0.3
        d.rectangle([x, y, x + ww, y + wh], fill=j((60, 70, 85), 20))
    d.rectangle([0, horizon, w, h], fill=j((110, 110, 112)))
    d.rectangle([0, horizon, w, horizon + h * 0.012], fill=j((170, 170, 165)))
  elif shot.camera == 1:  # shopping mall: bright wall, shop fronts, tiled floor
    d.rectangle([0, 0, w, horizon], fill=j((225, 220, 205)))
    for _ in range(rng.integers(1, 3)):
      x = rng.uniform(-0.2, 0.8) * w
      d.rectangle([x, horizon * 0.25, x + w * rng.uniform(0.3, 0.6), horizon],
                  fill=j([(170, 190, 200), (210, 180, 150), (190, 200, 170)][rng.integers(3)], 20))
    d.rectangle([0, horizon, w, h], fill=j((200, 190, 170)))
    step = h * rng.uniform(0.05, 0.08)
    for y in np.arange(horizon, h, step):
      d.line([0, y, w, y], fill=j((170, 160, 140)), width=2)
  elif shot.camera == 2:  # park: sky, trees, grass, path
    d.rectangle([0, 0, w, horizon], fill=j((175, 200, 220)))
    for _ in range(rng.integers(2, 5)):
      x, y = rng.uniform(0, w), rng.uniform(0.15, 0.5) * h
      r = w * rng.uniform(0.25, 0.45)
      d.rectangle([x - r * 0.12, y, x + r * 0.12, horizon], fill=j((90, 65, 45)))
      d.ellipse([x - r, y - r, x + r, y + r * 0.8], fill=j((55, 105, 55), 20))
    d.rectangle([0, horizon, w, h], fill=j((95, 145, 70), 15))
    d.polygon([(w * 0.35, horizon), (w * 0.65, horizon), (w * 1.1, h), (-w * 0.1, h)], fill=j((175, 160, 130)))
  else:  # station: dark walls, pillars, platform edge line
    d.rectangle([0, 0, w, horizon], fill=j((85, 88, 95)))
    for _ in range(rng.integers(1, 3)):
      x = rng.uniform(0, w)
      d.rectangle([x, 0, x + w * rng.uniform(0.12, 0.22), horizon], fill=j((150, 150, 155)))
    d.rectangle([0, horizon, w, h], fill=j((135, 135, 138)))
    y = horizon + (h - horizon) * rng.uniform(0.1, 0.3)
    d.rectangle([0, y, w, y + h * 0.015], fill=j((220, 190, 40)))
  for _ in range(rng.integers(1, 5)):  # clutter: signs, bins, posters
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    s = w * rng.uniform(0.08, 0.25)
    colour = tuple(int(v) for v in rng.integers(40, 220, 3))
    if rng.random() < 0.5:
      d.rectangle([x, y, x + s, y + s * rng.uniform(0.5, 2.0)], fill=colour)
    else:
      d.ellipse([x, y, x + s, y + s], fill=colour)


def _garment_layer(pt: _Painter, colour, pattern: str, skel, body_pts, sleeve_len: float):
  """Fills the torso polygon and sleeves through one mask so stripes run across both."""
  mask = Image.new("L", (pt.w, pt.h), 0)
  md = ImageDraw.Draw(mask)
  pt.poly(body_pts, 255, draw=md)
  for i in (0, 1):
    sh, el, wr = skel[f"arm{i}"]
    end = _along(sh, el, sleeve_len / 0.5) if sleeve_len <= 0.5 else _along(el, wr, (sleeve_len - 0.5) / 0.5)
    pts = [sh, el, end] if sleeve_len > 0.5 else [sh, end]
    pt.limb(pts, 0.34, 255, draw=md)
  fill = Image.new("RGB", (pt.w, pt.h), colour)
  if pattern == "striped":
    fd = ImageDraw.Draw(fill)
    stripe = (235, 235, 230) if sum(colour) < 380 else (35, 35, 40)
    period = 0.36 * pt.u
    y = pt.y0 + 1.3 * pt.u
    while y < pt.h:
      fd.rectangle([0, y, pt.w, y + period * 0.42], fill=stripe)
      y += period
  pt.img.paste(fill, (0, 0), mask)


def _draw_person(pt: _Painter, a: dict, shot: Shot, rng: np.random.Generator) -> None:
  front = shot.view == "front"
  skel = _skeleton(shot)
  skin = SKIN_RGB[a["_skin"]]
  hair = HAIR_RGB[a["hair.colour"]]
  upper = _garment_rgb(a["upper.colour"], shot, rng)
  lower = _garment_rgb(a["lower.colour"], shot, rng)
  shoes = _garment_rgb(a["shoes.colour"], shot, rng)
  bag = _garment_rgb(a["bag.colour"], shot, rng) if a["bag.colour"] else None
  bag_x = bag_image_side(shot)

  # ground shadow
  pt.ellipse(0, 7.85, 1.1, 0.18, _shade(_pixel(pt, 0, 7.95), 0.75))
  # backpack body peeking out behind the torso (front view)
  if a["bag.type"] == "backpack" and front:
    pt.poly([(-0.86, 1.75), (0.86, 1.75), (0.9, 3.55), (-0.9, 3.55)], _shade(bag, 0.85))
  if a["hair.length"] == "long" and front:
    pt.poly([(-0.44, 0.35), (0.44, 0.35), (0.5, 1.95), (-0.5, 1.95)], _shade(hair, 0.85))

  # legs and shoes
  for i in (0, 1):
    hip, knee, ankle = skel[f"leg{i}"]
    long_legs = a["lower.type"] in ("trousers", "jeans")
    pt.limb([hip, knee], 0.5, lower if long_legs else skin)
    pt.limb([knee, ankle], 0.4, lower if long_legs else skin)
    if a["lower.type"] == "jeans":
      pt.limb([_along(hip, knee, 0.15), knee, _along(knee, ankle, 0.9)], 0.05, _shade(lower, 1.3))
    if a["lower.type"] == "shorts":
      pt.limb([hip, _along(hip, knee, 0.6)], 0.56, lower)
    pt.ellipse(ankle[0] + (0.05 if i else -0.05), ankle[1] + 0.1, 0.27, 0.15, shoes)
    pt.ellipse(ankle[0] + (0.05 if i else -0.05), ankle[1] + 0.19, 0.25, 0.05, _shade(shoes, 0.6))
  if a["lower.type"] == "shorts":
    pt.poly([(-0.64, 3.8), (0.64, 3.8), (0.68, 4.35), (-0.68, 4.35)], lower)
  elif a["lower.type"] == "skirt":
    pt.poly([(-0.62, 3.7), (0.62, 3.7), (0.98, 5.75), (0.3, 5.85), (-0.3, 5.85), (-0.98, 5.75)], lower)
  else:
    pt.poly([(-0.64, 3.8), (0.64, 3.8), (0.7, 4.3), (-0.7, 4.3)], lower)

  # arms in skin, then the garment (torso + sleeves) through one mask
  for i in (0, 1):
    sh, el, wr = skel[f"arm{i}"]
    pt.limb([sh, el, wr], 0.3, skin)
    pt.ellipse(wr[0], wr[1] + 0.08, 0.16, 0.19, skin)
  kind = a["upper.type"]
  bottom, flare = (5.5, 0.84) if kind == "coat" else (4.15, 0.68)
  body = [(-0.24, 1.22), (0.24, 1.22), (0.78, 1.42), (0.84, 1.7), (0.62, 3.5), (flare, bottom), (-flare, bottom),
          (-0.62, 3.5), (-0.84, 1.7), (-0.78, 1.42)]
  sleeve = 0.32 if a["upper.sleeves"] == "short" else 0.95
  _garment_layer(pt, upper, a["upper.pattern"], skel, body, sleeve)
  dark = _shade(upper, 0.62)
  if kind == "sweater":
    pt.poly([(-0.66, 3.92), (0.66, 3.92), (0.68, 4.15), (-0.68, 4.15)], dark)
    for i in (0, 1):
      sh, el, wr = skel[f"arm{i}"]
      pt.limb([_along(el, wr, 0.82), _along(el, wr, 0.93)], 0.36, dark)
  if front:
    if kind == "jacket":
      pt.poly([(-0.2, 1.25), (0.2, 1.25), (0.13, bottom), (-0.13, bottom)], RGB[a["_inner"]])
      pt.limb([(-0.13, 1.3), (-0.13, bottom)], 0.05, dark)
      pt.limb([(0.13, 1.3), (0.13, bottom)], 0.05, dark)
    elif kind == "coat":
      pt.limb([(0.0, 1.35), (0.0, bottom)], 0.06, dark)
      for y in (2.0, 2.7, 3.4):
        pt.ellipse(0.12, y, 0.05, 0.05, dark)
    elif kind == "shirt":
      pt.poly([(-0.26, 1.2), (0.0, 1.5), (-0.06, 1.2)], _shade(upper, 1.25))
      pt.poly([(0.26, 1.2), (0.0, 1.5), (0.06, 1.2)], _shade(upper, 1.25))
      for y in (1.9, 2.5, 3.1, 3.7):
        pt.ellipse(0.0, y, 0.04, 0.04, dark)
    if a["upper.pattern"] == "logo":
      logo = (235, 235, 230) if sum(upper) < 380 else (40, 40, 44)
      pt.ellipse(0.0, 2.25, 0.24, 0.2, logo)
      pt.ellipse(0.0, 2.25, 0.12, 0.1, _shade(RGB["red"], 1.0) if upper != RGB["red"] else (30, 60, 180))
  else:
    pt.limb([(0.0, 1.45), (0.0, bottom - 0.1)], 0.03, dark)

  # neck, head, face, hair, hat
  pt.poly([(-0.13, 0.9), (0.13, 0.9), (0.15, 1.3), (-0.15, 1.3)], _shade(skin, 0.92))
  if a["upper.type"] in ("t-shirt", "sweater") and front:
    pt.ellipse(0.0, 1.24, 0.2, 0.08, _shade(skin, 0.92))
  if front:
    pt.ellipse(0.0, 0.52, 0.39, 0.49, hair)
    pt.ellipse(0.0, 0.6, 0.33, 0.44, skin)
    eye = (40, 30, 30)
    for s in (-1, 1):
      pt.ellipse(s * 0.13, 0.56, 0.04, 0.035, eye)
    pt.limb([(-0.06, 0.86), (0.06, 0.86)], 0.025, _shade(skin, 0.7))
    if a["glasses"] != "none":
      frame = (20, 20, 24)
      for s in (-1, 1):
        if a["glasses"] == "sunglasses":
          pt.ellipse(s * 0.14, 0.57, 0.12, 0.08, frame)
        else:
          pt.draw.rectangle(pt.box(s * 0.14 - 0.11, 0.5, s * 0.14 + 0.11, 0.64), outline=frame,
                            width=max(1, int(0.035 * pt.u)))
      pt.limb([(-0.03, 0.55), (0.03, 0.55)], 0.03, frame)
    if a["hair.length"] == "long":
      for s in (-1, 1):
        pt.poly([(s * 0.3, 0.45), (s * 0.41, 0.45), (s * 0.46, 1.9), (s * 0.3, 1.85)], hair)
  else:
    pt.ellipse(0.0, 0.53, 0.39, 0.5, hair)
    if a["hair.length"] == "long":
      pt.poly([(-0.4, 0.55), (0.4, 0.55), (0.44, 2.0), (0.0, 2.1), (-0.44, 2.0)], hair)
  if a["hat.type"] != "none":
    hat = _garment_rgb(a["hat.colour"], shot, rng)
    if a["hat.type"] == "cap":
      pt.draw.chord(pt.box(-0.41, -0.02, 0.41, 0.72), 180, 360, fill=hat)
      if front:
        pt.ellipse(0.0, 0.35, 0.44, 0.07, _shade(hat, 0.7))
    else:
      pt.draw.chord(pt.box(-0.42, -0.04, 0.42, 0.92), 180, 360, fill=hat)
      pt.poly([(-0.42, 0.36), (0.42, 0.36), (0.42, 0.48), (-0.42, 0.48)], _shade(hat, 0.75))

  # carried items
  if a["bag.type"] == "backpack":
    if front:
      for s in (-1, 1):
        pt.limb([(s * 0.42, 1.35), (s * 0.5, 3.0)], 0.15, bag)
    else:
      pt.draw.rounded_rectangle(pt.box(-0.58, 1.6, 0.58, 3.6), radius=0.15 * pt.u, fill=bag)
      pt.draw.rectangle(pt.box(-0.4, 2.7, 0.4, 3.4), fill=_shade(bag, 0.75))
  elif a["bag.type"] == "handbag":
    s = bag_x
    pt.limb([(s * 0.5, 1.35), (s * 1.0, 3.95)], 0.05, _shade(bag, 0.7))
    pt.draw.rounded_rectangle(pt.box(s * 0.68, 3.9, s * 1.34, 4.55), radius=0.08 * pt.u, fill=bag)


def _pixel(pt: _Painter, x: float, y: float):
  px, py = pt.p(x, y)
  return pt.img.getpixel((int(min(max(px, 0), pt.w - 1)), int(min(max(py, 0), pt.h - 1))))


def _occlude(pt: _Painter, shot: Shot, rng: np.random.Generator) -> None:
  if shot.occluder is None:
    return
  colour = tuple(int(v) for v in rng.integers(30, 200, 3))
  if shot.occluder == "low":  # car bonnet, bench, railing
    y = pt.h * (1 - shot.occluder_extent)
    pt.draw.rounded_rectangle([-pt.w * 0.2, y, pt.w * 1.2, pt.h * 1.1], radius=pt.w * 0.08, fill=colour)
    pt.draw.rectangle([0, y + pt.h * 0.03, pt.w, y + pt.h * 0.045], fill=_shade(colour, 0.7))
  else:  # pole or a passer-by at the frame edge
    width = pt.w * shot.occluder_extent
    x0 = 0 if shot.occluder == "left" else pt.w - width
    pt.draw.rectangle([x0, 0, x0 + width, pt.h], fill=colour)
    pt.draw.rectangle([x0 + width * 0.4, 0, x0 + width * 0.6, pt.h], fill=_shade(colour, 1.2))


def render(attrs: dict, shot: Shot, size_hw: tuple[int, int]) -> Image.Image:
  """One RGB image of ``size_hw`` (H, W) showing identity ``attrs`` under nuisance ``shot``."""
  rng = np.random.default_rng(shot.seed)
  pt = _Painter(size_hw, shot)
  _background(pt, shot, rng)
  _draw_person(pt, attrs, shot, rng)
  _occlude(pt, shot, rng)
  img = pt.img.resize((size_hw[1], size_hw[0]), Image.Resampling.LANCZOS)
  x = np.asarray(img, np.float32)
  ramp = 1.0 + shot.gradient * (np.linspace(-0.5, 0.5, size_hw[0], dtype=np.float32)[:, None, None])
  x = x * shot.brightness * np.asarray(shot.tint, np.float32) * ramp
  x = x + rng.normal(0.0, shot.noise, x.shape).astype(np.float32)
  img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  if shot.blur > 0:
    img = img.filter(ImageFilter.GaussianBlur(shot.blur))
  return img
