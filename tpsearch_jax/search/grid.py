"""A picture of results: one row per query (its text on top), the top-k images with rank and score under each.

``render_grid`` draws any results (CLI ``query --grid``, the notebook, the README image); a cell may be marked (a
green frame: the ground-truth person, as the notebook does) and may show a second image beside the photo (the part
model's foreground map and stripes, ``explain.overlay``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PAD, TEXT_H = 6, 18
MARK = (40, 170, 60)
NO_MARK = (200, 60, 50)


@dataclasses.dataclass
class Cell:
  """One result image: the file (path or PIL image), its rank and score, optional mark and side image."""

  image: str | Image.Image
  rank: int
  score: float
  mark: bool | None = None  # True: green frame (correct), False: red frame, None: no frame
  side: Image.Image | None = None  # drawn to the right of the image (e.g. the foreground overlay)
  label: str = ""  # an extra line under rank and score


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def _thumb(image: str | Image.Image, height: int) -> Image.Image:
  im = Image.open(image) if isinstance(image, str) else image
  im = im.convert("RGB")
  return im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)


def _wrap(text: str, font, width: int) -> list[str]:
  """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide in ``font``."""
  lines, line = [], ""
  for word in text.split():
    trial = f"{line} {word}".strip()
    if line and font.getlength(trial) > width:
      lines.append(line)
      line = word
    else:
      line = trial
  return lines + [line] if line else lines or [""]


def render_grid(rows: Sequence[tuple[str, Sequence[Cell]]], height: int = 160, font_size: int = 13) -> Image.Image:
  """rows: [(query text, cells best first)] → an RGB image: per row the query (wrapped to the row's width), then the
  cells side by side, each with "#rank  score" (and its label) under it."""
  font, bold = _font(font_size), _font(font_size + 1)
  blocks = []
  for text, cells in rows:
    tiles = []
    for c in cells:
      im = _thumb(c.image, height)
      if c.side is not None:
        side = _thumb(c.side, height)
        joined = Image.new("RGB", (im.width + 2 + side.width, height), "white")
        joined.paste(im, (0, 0))
        joined.paste(side, (im.width + 2, 0))
        im = joined
      caption = max(font.getlength(f"#{c.rank}  {c.score:.3f}"), font.getlength(c.label))
      tiles.append((c, im, max(im.width, int(caption) + 2)))
    width = max(PAD + sum(w + PAD for _, _, w in tiles), 320)
    lines = _wrap(text, bold, width - 2 * PAD)
    text_h = TEXT_H * len(lines)
    label_h = TEXT_H * (2 if any(c.label for c, _, _ in tiles) else 1)
    block = Image.new("RGB", (width, PAD + text_h + height + 6 + label_h + PAD), "white")
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
      draw.text((PAD, PAD + i * TEXT_H), line, fill=(0, 0, 0), font=bold)
    x, y = PAD, PAD + text_h
    for c, im, w in tiles:
      block.paste(im, (x, y + 3))
      if c.mark is not None:
        draw.rectangle([x - 2, y + 1, x + im.width + 1, y + height + 4], outline=MARK if c.mark else NO_MARK,
                       width=3)
      draw.text((x, y + height + 6), f"#{c.rank}  {c.score:.3f}", fill=(0, 0, 0), font=font)
      if c.label:
        draw.text((x, y + height + 6 + TEXT_H), c.label, fill=(90, 90, 90), font=font)
      x += w + PAD
    blocks.append(block)
  if not blocks:
    raise ValueError("render_grid needs at least one query row")
  out = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks)), "white")
  y = 0
  for b in blocks:
    out.paste(b, (0, y))
    y += b.height
    ImageDraw.Draw(out).line([(0, y - 1), (out.width, y - 1)], fill=(220, 220, 220))
  return out
