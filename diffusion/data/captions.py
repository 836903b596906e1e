"""Captions of digit images from their label and measured attributes; the inverse
(`parse`); prompt-image agreement of generated samples; caption files of image
folders. numpy only.

    attrs = captions.measure(images)             # {"thickness", "slant", "size"}: [N]
    bins = captions.AttributeBins.fit(attrs)     # tertiles of the training set
    texts = captions.captions_for(images, labels, bins)   # "a thin 7 slanted to the right"
    captions.parse("a thin 7")   # {"digit": 7, "thickness": "thin", "slant": None, "size": None}
    captions.agreement(prompts, samples, bins, predicted_labels=classifier_labels)

Images: float ``[N, H, W]`` or ``[N, H, W, 1]`` in [-1, 1], ink bright and
background -1 (MNIST scaled to [-1, 1]); the ink weight of a pixel is
``w = clip((x + 1) / 2, 0, 1)``. Rows go down, columns go right.

Grammar of the captions (one fixed word order; `caption` writes it, `parse`
reads it back)::

    caption  := article [size " "] [thickness " "] digit [" slanted to the " slant]
    article  := "an " before the digit 8 (read "eight"), else "a "
    size     := "small" | "large"
    thickness:= "thin" | "thick"
    slant    := "left" | "right"
    digit    := "0" | ... | "9"

e.g. "a 7", "a thin 7", "an 8", "a large thick 3 slanted to the left". Each
attribute's words name its lower and upper bins (`AttributeBins`, by default
the tertiles of the training set); the middle bin is left unnamed: the words
are relative to the data ("thin" = thinner than two thirds of the training
digits) and the commonest case needs no word, so captions stay short and every
attribute has the same three-way shape. A caption that names no word of an
attribute says nothing about it: `agreement` scores only the attributes a prompt
names. (In training data made by `captions_for`, "a 7" is always a middle-bin 7.)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

ATTRIBUTES = ("thickness", "slant", "size")
# The words of each attribute's lower and upper bin; the middle bin has none.
WORDS = {"thickness": ("thin", "thick"), "slant": ("left", "right"),
         "size": ("small", "large")}
CAPTION_FILE = "captions.jsonl"

# Contour levels (of the ink weight w) whose mean length is the perimeter that
# `thickness` uses: below 1/2, so a 1-pixel line at any sub-pixel offset (its
# most covered pixel has w >= 1/2) has both long sides in every level's contour;
# at or above 1/4, so the faint background of generated samples
# (w < 1/4, i.e. x < -1/2) is not ink.
_LEVELS = (0.25, 0.35, 0.45)


# --------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------


def _as_images(images) -> np.ndarray:
  x = np.asarray(images, dtype=np.float64)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3:
    raise ValueError(f"measure: images have shape {tuple(np.shape(images))}; expected "
                     "[N, H, W] or [N, H, W, 1] (one gray channel) in [-1, 1]")
  return x


def _contour_length(w: np.ndarray, level: float) -> np.ndarray:
  """[N] total length (pixels) of the level-`level` contours of the bilinear
  interpolant of `w` [N, H, W] (marching squares), zero outside the image so
  every contour closes. Saddle cells join their high corners when the cell's
  mean is above the level."""
  p = np.pad(w, ((0, 0), (1, 1), (1, 1)))
  high = p > level
  corners = (high[:, :-1, :-1], high[:, :-1, 1:], high[:, 1:, 1:], high[:, 1:, :-1])
  crossed = ~((corners[0] == corners[1]) & (corners[1] == corners[2])
              & (corners[2] == corners[3]))
  img, row, col = np.nonzero(crossed)  # The cells the contour passes; few.
  a, b = p[img, row, col], p[img, row, col + 1]  # Corners TL, TR, BR, BL.
  c, d = p[img, row + 1, col + 1], p[img, row + 1, col]
  ha, hb, hc, hd = a > level, b > level, c > level, d > level
  on_t, on_r, on_b, on_l = ha != hb, hb != hc, hd != hc, ha != hd
  with np.errstate(divide="ignore", invalid="ignore"):  # Uncrossed edges: unused.
    # The crossing on each cell edge, in cell coordinates (x right, y down).
    tx, ry = (level - a) / (b - a), (level - b) / (c - b)
    bx, ly = (level - d) / (c - d), (level - a) / (d - a)
  zeros, ones = np.zeros_like(a), np.ones_like(a)
  pts = {"t": (tx, zeros), "r": (ones, ry), "b": (bx, ones), "l": (zeros, ly)}

  def dist(u, v):
    return np.hypot(pts[u][0] - pts[v][0], pts[u][1] - pts[v][1])

  # Two crossings: the first and the last crossed edge in the order t, r, b, l.
  first = [np.where(on_t, pts["t"][k], np.where(on_r, pts["r"][k], pts["b"][k]))
           for k in (0, 1)]
  last = [np.where(on_l, pts["l"][k], np.where(on_b, pts["b"][k], pts["r"][k]))
          for k in (0, 1)]
  length = np.hypot(first[0] - last[0], first[1] - last[1])
  # Four crossings (a saddle: TL and BR on one side of the level, TR and BL on
  # the other): two segments, cutting off TR and BL when TL is on the side
  # that the cell's mean is on.
  saddle = on_t & on_r & on_b & on_l
  joined = ha == ((a + b + c + d) / 4 > level)
  length = np.where(saddle, np.where(joined, dist("t", "r") + dist("b", "l"),
                                     dist("t", "l") + dist("r", "b")), length)
  return np.bincount(img, weights=length, minlength=w.shape[0])


def measure(images) -> dict[str, np.ndarray]:
  """Per-image stroke attributes, each float64 [N]:

  - ``"thickness"``: the stroke width in pixels: the width of the rectangle
    with the ink's area ``A`` and perimeter ``P``, ``P/4 - sqrt(P^2/16 - A)``
    (the smaller root of ``t^2 - (P/2) t + A``; ``P/4`` for compact blobs,
    where the root is complex). Exact for a straight bar of any length, so it
    measures line width, not digit size (``A / (P/2)`` would count the two
    ends and shrink for short strokes); a closed loop of length ``S`` reads
    ``~t + t^2/S`` (a few % high for a 0). ``A`` is the sum of the hardened ink
    ``clip(2w - 1/2, 0, 1)`` (point-symmetric about ``w = 1/2``, so it keeps the
    anti-aliased coverage of an edge and drops the faint background ``w < 1/4``
    of noisy samples); ``P`` is the mean length of the ink's contours at
    ``w = 0.25, 0.35, 0.45`` (marching squares on the bilinear interpolant).
  - ``"slant"``: the ink-weighted regression slope of x on height, dx/d(up)
    with up = -row (rows go down): positive = the top leans right ("slanted to
    the right"), 0 = upright, 1 = 45 degrees. A bar sheared by ``s`` (x moving
    ``s`` pixels right per pixel up) reads ``s``; a left-right mirror negates it.
  - ``"size"``: the ink's height as a fraction of the image height: the height
    of the evenly inked run of rows with the same vertical spread,
    ``sqrt(12 var(row) + 1) / H`` (``var`` ink-weighted): equals the bounding box
    for ink spread evenly over its rows (a bar), reads more for ink massed at
    the top and bottom and less for ink massed in one part (MNIST class
    medians: 0.56 for 4s, 0.64 for 6s and 9s, 0.70-0.76 for the others, whose
    boxes are all 20/28 = 0.71). Not the bounding box: MNIST scales every digit
    to a 20-pixel box, so 86% of its bounding boxes are exactly 20/28 high,
    and 99.7% of the 8x8 digits span all 8 rows (tertiles of those are mostly
    ties); a stray speck would also stretch a box to the image edge.

  Slant and size weigh each pixel by the hardened ink as well (not by ``w``),
  so the faint background of noisy samples counts for nothing. An image with
  no ink (no pixel above w = 1/4) or a non-finite pixel gives NaN (no
  exception, no warning); slant is NaN when all ink lies in one row.
  """
  x = _as_images(images)
  n, height, width = x.shape
  finite = np.isfinite(x).all((1, 2))
  x = np.where(finite[:, None, None], x, -1.0)  # Measured, then reported as NaN.
  w = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
  ink = np.clip(2.0 * w - 0.5, 0.0, 1.0)
  area = ink.sum((1, 2))
  has_ink = finite & (area > 0)
  safe = np.where(has_ink, area, 1.0)

  perimeter = np.mean([_contour_length(w, s) for s in _LEVELS], axis=0)
  thickness = perimeter / 4 - np.sqrt(np.maximum(perimeter ** 2 / 16 - area, 0.0))

  col = np.arange(width) - (width - 1) / 2  # Centred: a mirror maps col to -col exactly.
  up = (height - 1) / 2 - np.arange(height)
  col_mass, row_mass = ink.sum(1), ink.sum(2)  # [N, W], [N, H]
  mean_col = (col_mass * col).sum(1) / safe
  mean_up = (row_mass * up).sum(1) / safe
  dc = col[None, None, :] - mean_col[:, None, None]
  du = up[None, :, None] - mean_up[:, None, None]
  cov = (ink * dc * du).sum((1, 2)) / safe
  var_up = (row_mass * (up[None] - mean_up[:, None]) ** 2).sum(1) / safe
  with np.errstate(divide="ignore", invalid="ignore"):
    slant = np.where(var_up > 1e-12, cov / var_up, np.nan)
  size = np.sqrt(12.0 * var_up + 1.0) / height

  nan = np.full(n, np.nan)
  return {"thickness": np.where(has_ink, thickness, nan),
          "slant": np.where(has_ink, slant, nan),
          "size": np.where(has_ink, size, nan)}


# --------------------------------------------------------------------------
# Bins: thresholds that turn attributes into words.
# --------------------------------------------------------------------------


def _attribute(attrs: Mapping[str, Any], name: str, what: str) -> np.ndarray:
  if name not in attrs:
    raise KeyError(f"{what}: the attributes have keys {sorted(attrs)}; expected "
                   f"{', '.join(ATTRIBUTES)} (as `measure` returns them)")
  return np.asarray(attrs[name], dtype=np.float64).reshape(-1)


@dataclasses.dataclass(frozen=True)
class AttributeBins:
  """Per-attribute thresholds ``(lower, upper)``: a value below ``lower`` gets
  the attribute's first word (thin, left, small), above ``upper`` its second
  (thick, right, large), else (and NaN) no word. `fit` sets them to the
  ``low`` and ``high`` quantiles of a training set (tertiles by default); then
  a random image of that data has each word with probability ``low`` and
  ``1 - high`` (1/3 each for tertiles): the chance level of `agreement`.
  """
  thickness: tuple[float, float]
  slant: tuple[float, float]
  size: tuple[float, float]
  low: float = 1 / 3
  high: float = 2 / 3

  def __post_init__(self):
    if not 0 < self.low < self.high < 1:
      raise ValueError(f"AttributeBins: low={self.low}, high={self.high}; the quantiles "
                       "must satisfy 0 < low < high < 1")
    for name in ATTRIBUTES:
      lo, hi = getattr(self, name)
      if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"AttributeBins: {name} thresholds ({lo}, {hi}) must be finite "
                         "with lower <= upper")

  @classmethod
  def fit(cls, attrs: Mapping[str, Any], low: float = 1 / 3,
          high: float = 2 / 3) -> AttributeBins:
    """The ``low`` and ``high`` quantiles of each attribute of `attrs` (as
    `measure` returns them; NaN values ignored)."""
    if not 0 < low < high < 1:
      raise ValueError(f"AttributeBins.fit: low={low}, high={high}; the quantiles must "
                       "satisfy 0 < low < high < 1")
    thresholds = {}
    for name in ATTRIBUTES:
      values = _attribute(attrs, name, "AttributeBins.fit")
      values = values[np.isfinite(values)]
      if not len(values):
        raise ValueError(f"AttributeBins.fit: {name} has no finite value (every image "
                         "empty?); fit on images with ink")
      lo, hi = np.quantile(values, [low, high])
      thresholds[name] = (float(lo), float(hi))
    return cls(low=float(low), high=float(high), **thresholds)

  def words(self, attrs: Mapping[str, Any]) -> list[dict[str, str | None]]:
    """Per image ``{"thickness": "thin"|None|"thick", "slant": "left"|None|"right",
    "size": "small"|None|"large"}``."""
    columns = {name: _attribute(attrs, name, "AttributeBins.words") for name in ATTRIBUTES}
    n = {len(v) for v in columns.values()}
    if len(n) != 1:
      raise ValueError(f"AttributeBins.words: the attributes have different lengths "
                       f"{ {k: len(v) for k, v in columns.items()} }")
    out = [{} for _ in range(n.pop())]
    for name, values in columns.items():
      (lo, hi), (first, second) = getattr(self, name), WORDS[name]
      for row, v in zip(out, values):
        row[name] = first if v < lo else second if v > hi else None  # NaN: neither.
    return out

  def chance(self, attribute: str, word: str) -> float:
    """The probability of `word` for a random image of the fitted data."""
    return self.low if word == WORDS[attribute][0] else 1.0 - self.high

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: ``{"thickness": [lower, upper], "slant": [...], "size": [...],
    "low": ..., "high": ...}``."""
    out: dict[str, Any] = {name: list(getattr(self, name)) for name in ATTRIBUTES}
    out.update(low=self.low, high=self.high)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> AttributeBins:
    missing = [k for k in ATTRIBUTES if k not in d]
    if missing:
      raise KeyError(f"AttributeBins.from_dict: missing {', '.join(missing)}; expected "
                     f"{', '.join(ATTRIBUTES)} as [lower, upper] (and low, high)")
    thresholds = {}
    for name in ATTRIBUTES:
      pair = d[name]
      if len(pair) != 2:
        raise ValueError(f"AttributeBins.from_dict: {name}={pair!r}; expected [lower, upper]")
      thresholds[name] = (float(pair[0]), float(pair[1]))
    return cls(low=float(d.get("low", 1 / 3)), high=float(d.get("high", 2 / 3)), **thresholds)


# --------------------------------------------------------------------------
# Captions and their inverse.
# --------------------------------------------------------------------------


def caption(label: int, words: Mapping[str, str | None]) -> str:
  """The caption of digit `label` with `words` (`AttributeBins.words` of one
  image, or `parse`'s dict; missing keys and None = no word; other keys ignored),
  in the module's grammar: "a large thick 3 slanted to the left"."""
  if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= 9:
    raise ValueError(f"caption: label={label!r}; expected an integer digit 0..9")
  for name in ATTRIBUTES:
    word = words.get(name)
    if word is not None and word not in WORDS[name]:
      raise ValueError(f"caption: {name}={word!r}; expected one of "
                       f"{', '.join(map(repr, WORDS[name]))} or None")
  noun = [w for w in (words.get("size"), words.get("thickness")) if w] + [str(int(label))]
  text = ("an " if noun[0] == "8" else "a ") + " ".join(noun)
  if words.get("slant"):
    text += " slanted to the " + words["slant"]
  return text


def captions_for(images, labels, bins: AttributeBins) -> list[str]:
  """The caption of every image: its label and `bins`' words of `measure(images)`."""
  labels = np.asarray(labels).reshape(-1)
  attrs = measure(images)
  if len(labels) != len(attrs["size"]):
    raise ValueError(f"captions_for: {len(attrs['size'])} images but {len(labels)} labels")
  return [caption(int(y), w) for y, w in zip(labels, bins.words(attrs))]


_ADJECTIVES = {w: name for name in ("size", "thickness") for w in WORDS[name]}


def _empty_parse() -> dict[str, Any]:
  return {"digit": None, "thickness": None, "slant": None, "size": None}


def parse(prompt) -> dict[str, Any]:
  """``{"digit": int|None, "thickness": "thin"|"thick"|None, "slant":
  "left"|"right"|None, "size": "small"|"large"|None}`` of a caption in the
  module's grammar, so ``caption(p["digit"], p) == c`` for ``p = parse(c)``.
  Also read: any case and spacing, a final ".", "a" or "an" (or no article)
  before any digit, and the size and thickness words in either order. Anything
  else (other words, two digits, a repeated attribute, not a string) gives all
  None; never raises."""
  out = _empty_parse()
  if not isinstance(prompt, str):
    return out
  tokens = prompt.strip().lower().rstrip(".").split()
  if tokens and tokens[0] in ("a", "an"):
    tokens = tokens[1:]
  if tokens[-4:-1] == ["slanted", "to", "the"] and tokens[-1] in WORDS["slant"]:
    out["slant"], tokens = tokens[-1], tokens[:-4]
  if not tokens or not (len(tokens[-1]) == 1 and tokens[-1] in "0123456789"):
    return _empty_parse()
  out["digit"] = int(tokens[-1])
  for token in tokens[:-1]:
    name = _ADJECTIVES.get(token)
    if name is None or out[name] is not None:
      return _empty_parse()
    out[name] = token
  return out


# --------------------------------------------------------------------------
# Agreement of generated samples with their prompts.
# --------------------------------------------------------------------------


def agreement(prompts: Sequence[str], images, bins: AttributeBins,
              predicted_labels=None) -> dict[str, Any]:
  """How often the image generated from each prompt (one each, in order) has
  what the prompt says, measured by `measure` and ``bins.words``.

  Returns ``{"n": prompts, "unparsed": prompts not in the grammar (they name
  nothing), "<attribute>": {"agreement", "count", "chance"}, ...}`` for
  thickness, slant, size and, when `predicted_labels` (a classifier's labels
  of the images) are given, "digit". ``count`` is the number of prompts that
  name the attribute, ``agreement`` the fraction of those whose image has the
  named word ("thin" agrees only with an image measured "thin"; an empty
  image agrees with nothing); NaN when count is 0. ``chance`` is the expected
  agreement of images drawn at random from the data the bins were fitted on:
  the mean over those prompts of ``bins.low`` (first word) or ``1 - bins.high``
  (second): 1/3 for tertile bins; 1/10 for the digit (uniform over 10 classes).
  """
  prompts = list(prompts)
  attrs = measure(images)
  if len(attrs["size"]) != len(prompts):
    raise ValueError(f"agreement: {len(prompts)} prompts but {len(attrs['size'])} images; "
                     "expected one image per prompt")
  parsed = [parse(p) for p in prompts]
  measured = bins.words(attrs)
  out: dict[str, Any] = {"n": len(prompts),
                         "unparsed": sum(p["digit"] is None for p in parsed)}
  for name in ATTRIBUTES:
    pairs = [(p[name], m[name]) for p, m in zip(parsed, measured) if p[name] is not None]
    out[name] = {
        "agreement": (float(np.mean([a == b for a, b in pairs])) if pairs else math.nan),
        "count": len(pairs),
        "chance": (float(np.mean([bins.chance(name, a) for a, _ in pairs])) if pairs
                   else math.nan)}
  if predicted_labels is not None:
    predicted = np.asarray(predicted_labels).reshape(-1)
    if len(predicted) != len(prompts):
      raise ValueError(f"agreement: {len(prompts)} prompts but {len(predicted)} "
                       "predicted_labels; expected one per image")
    hits = [int(y) == p["digit"] for p, y in zip(parsed, predicted) if p["digit"] is not None]
    out["digit"] = {"agreement": float(np.mean(hits)) if hits else math.nan,
                    "count": len(hits), "chance": 0.1}
  return out


# --------------------------------------------------------------------------
# Caption files of image folders.
# --------------------------------------------------------------------------


def _read_caption_jsonl(path: str) -> dict[str, str]:
  """``{file name: caption}`` of a captions.jsonl; ValueError naming the line."""
  out: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not JSON ({e.msg}); expected one "
                         '{"file": "name.png", "caption": "..."} per line') from e
      if (not isinstance(entry, dict) or not isinstance(entry.get("file"), str)
          or not isinstance(entry.get("caption"), str)):
        raise ValueError(f"{path}:{number}: {line.strip()[:80]!r}; expected "
                         '{"file": "name.png", "caption": "..."} (both strings)')
      name, text = os.path.normpath(entry["file"]), entry["caption"].strip()
      if out.get(name, text) != text:
        raise ValueError(f"{path}:{number}: {name!r} has two different captions, "
                         f"{out[name]!r} and {text!r}")
      out[name] = text
  return out


def read_caption_files(image_paths: Sequence[str | os.PathLike]) -> list[str] | None:
  """The caption of each image, in order, from either layout (both may be used,
  even in one folder):

  - ``<name>.txt`` beside the image ``<name>.png`` (any extension): its text,
    stripped of surrounding whitespace;
  - ``captions.jsonl`` in the image's folder: one ``{"file": "<name>.png",
    "caption": "..."}`` per line (`file` relative to that folder).

  None when no image has a caption. Raises ValueError when only some images
  have one (naming the first without one and both layouts), when an image's
  .txt and captions.jsonl disagree, or for a malformed captions.jsonl line.
  """
  image_paths = [os.fspath(p) for p in image_paths]
  tables: dict[str, dict[str, str]] = {}
  found: list[str | None] = []
  for image in image_paths:
    folder, name = os.path.split(image)
    if folder not in tables:
      jsonl = os.path.join(folder, CAPTION_FILE)
      tables[folder] = _read_caption_jsonl(jsonl) if os.path.isfile(jsonl) else {}
    from_jsonl = tables[folder].get(os.path.normpath(name))
    txt = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
    from_txt = None
    if os.path.isfile(txt):
      with open(txt, encoding="utf-8") as f:
        from_txt = f.read().strip()
    if from_txt is not None and from_jsonl is not None and from_txt != from_jsonl:
      raise ValueError(f"{image} has two different captions: {from_txt!r} in {txt} and "
                       f"{from_jsonl!r} in {os.path.join(folder, CAPTION_FILE)}; keep one")
    found.append(from_txt if from_txt is not None else from_jsonl)
  have = sum(c is not None for c in found)
  if have == 0:
    return None
  if have < len(found):
    image = image_paths[found.index(None)]
    folder, name = os.path.split(image)
    raise ValueError(
        f"{image} has no caption but {have} of {len(found)} images have one: captions "
        f"are all or none; expected {os.path.join(folder, os.path.splitext(name)[0] + '.txt')} "
        f"or a line {{\"file\": \"{name}\", \"caption\": \"...\"}} in "
        f"{os.path.join(folder, CAPTION_FILE)}")
  return found  # type: ignore[return-value]
