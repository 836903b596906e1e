"""diffusion.data.captions: measured attributes on drawn strokes of known width,
shear and height; tertile bins on real digits; the caption grammar and its
inverse; prompt-image agreement; caption files."""
import itertools
import json
import math
import os
import warnings

import numpy as np
import pytest

from diffusion.data import captions
from diffusion.data import prepare as data_prepare
from diffusion.data import sources as data_sources
from diffusion.data.idx import read_idx

# The real MNIST idx files where `python -m diffusion.data prepare mnist` puts them (a
# clone without them skips the one real-MNIST test; the same checks run on the always
# available 8x8 digits above it), else this development machine's copy.
MNIST_DIR = next((d for d in (data_prepare.dataset_dir("mnist"), "/work/shared/data/mnist")
                  if os.path.isdir(d)), data_prepare.dataset_dir("mnist"))
H = 28


def _bar(width, length, shear=0.0, xc=13.5, yc=13.5, size=H, k=16):
  """A parallelogram of ink in [-1, 1]: rows yc +- length/2 (pixel centres at
  integers), each row's ink `width` wide and centred at x = xc + shear * (yc - y),
  so the top leans right for shear > 0; anti-aliased by k x k supersampling (the
  exact area coverage of each pixel to 1/k^2)."""
  o = (np.arange(k) + 0.5) / k - 0.5
  s = (np.arange(size)[:, None] + o[None]).reshape(-1)
  y, x = np.meshgrid(s, s, indexing="ij")
  inside = (np.abs(y - yc) <= length / 2) & (np.abs(x - xc - shear * (yc - y)) <= width / 2)
  return inside.reshape(size, k, size, k).mean((1, 3)) * 2.0 - 1.0


def _rect_width(width, length, shear):
  """The width of the rectangle with the drawn parallelogram's area and perimeter:
  what `thickness` estimates (close to the perpendicular width width/sqrt(1+s^2))."""
  area, half_perimeter = width * length, length * math.hypot(1, shear) + width
  return half_perimeter / 2 - math.sqrt(half_perimeter ** 2 / 4 - area)


def _digits():
  images, labels, levels = data_sources._load_digits()  # [N, 8, 8, 1] 0..16, without sklearn.
  return images[..., 0] / (levels - 1) * 2.0 - 1.0, labels


def _dilate(x):
  """3x3 max filter (grey dilation), background -1 outside."""
  p = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-1.0)
  h, w = x.shape[1:]
  return np.max([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def _split_fractions(attrs, seed=0):
  """Bins fitted on a random half; the fraction of the other half in each bin."""
  n = len(attrs["size"])
  perm = np.random.default_rng(seed).permutation(n)
  fit, held = perm[: n // 2], perm[n // 2:]
  bins = captions.AttributeBins.fit({k: v[fit] for k, v in attrs.items()})
  words = bins.words({k: v[held] for k, v in attrs.items()})
  out = {}
  for name, (first, second) in captions.WORDS.items():
    got = [w[name] for w in words]
    out[name] = [got.count(first) / len(got), got.count(None) / len(got),
                 got.count(second) / len(got)]
  return out, len(fit), len(held)


def _three_se(n_fit, n_held, p=1 / 3):
  """3 standard errors of a held-out bin fraction: the held-out count is binomial
  given the thresholds (variance p(1-p)/n_held), and the thresholds are sample
  quantiles, whose true CDF values vary by p(1-p)/n_fit (order statistics of a
  uniform: Beta); independent halves, so the variances add."""
  return 3 * math.sqrt(p * (1 - p) * (1 / n_fit + 1 / n_held))


# ----------------------------------------------------------------- measure


def test_thickness_of_bars_is_their_width():
  # Length L = 20 rows, widths 1..4, shears 0 and +-0.3, 6 random sub-pixel
  # placements each. Tolerance: the area is exact (the hardened ink keeps each
  # edge pixel's coverage), so the error comes from the perimeter P, which for
  # t = P/4 - sqrt(P^2/16 - A) moves t by dt = -t dP / (2 (L - t)); the
  # contours round the bar's 4 corners and sit <= 1/4 pixel outside its ends:
  # |dP| <= 1.5 px, so |dt| <= 1.5 t / (2 (L - t)): 0.04 px at w = 1, 0.18 at w = 4.
  rng = np.random.default_rng(0)
  length, got = 20, {}
  for shear in (0.0, 0.3, -0.3):
    for w in (1, 2, 3, 4):
      places = rng.uniform(-0.5, 0.5, size=(6, 2))
      images = np.stack([_bar(w, length, shear, 13.5 + dx, 13.5 + dy) for dx, dy in places])
      t = captions.measure(images)["thickness"]
      expected = _rect_width(w, length, shear)
      tol = 1.5 * expected / (2 * (length - expected))
      np.testing.assert_allclose(t, expected, atol=tol, rtol=0,
                                 err_msg=f"width {w}, shear {shear}")
      got.setdefault(w, []).extend(t)
  for w in (1, 2, 3):  # Rank order exact: every bar of width w below every bar of w + 1.
    assert max(got[w]) < min(got[w + 1])
  # Pixel-aligned vertical bars: 1 pixel wide reads 1 (no blur ambiguity).
  t = captions.measure(np.stack([_bar(w, 20, 0.0, 14.0 if w % 2 else 13.5) for w in (1, 2, 3, 4)]))
  np.testing.assert_allclose(t["thickness"], [1, 2, 3, 4], atol=0.1)


def test_thickness_does_not_grow_with_the_stroke_length():
  # The same stroke drawn 10 and 24 rows tall: within 0.1 px. (The plain ratio
  # A / (P/2) = t L / (L + t) moves by 0.18 px at w = 2 and 0.36 at w = 3.)
  for w in (1, 2, 3, 4):
    short, tall = captions.measure(np.stack([_bar(w, 10, 0.2), _bar(w, 24, 0.2)]))["thickness"]
    assert abs(tall - short) < 0.1, (w, short, tall)


def test_slant_is_the_shear():
  # Each full row's ink centroid lies on the bar's centre line to within
  # eps ~ 0.05 px (pixelisation of the edge pixels); a slope fitted to row
  # centroids off by at most eps is off by at most eps sum|u| / sum u^2
  # = 3 eps / L = 0.0075 for L = 20: tolerance 0.01.
  rng = np.random.default_rng(1)
  for shear in (-0.6, -0.3, 0.0, 0.3, 0.6):
    for w in (1, 3):
      images = np.stack([_bar(w, 20, shear, 13.5 + dx, 13.5 + dy)
                         for dx, dy in rng.uniform(-0.5, 0.5, size=(4, 2))])
      np.testing.assert_allclose(captions.measure(images)["slant"], shear, atol=0.01)
  # Positive = the top leans right: the top of a "/" bar is at larger x.
  slash = _bar(2, 20, 0.5)
  rows = np.nonzero((slash > -1).any(1))[0]
  top, bottom = [np.average(np.arange(H), weights=slash[r] + 1) for r in (rows[1], rows[-2])]
  assert top > bottom and captions.measure(slash[None])["slant"][0] > 0
  # A vertical bar placed mirror-symmetrically: 0 exactly (to rounding).
  assert abs(captions.measure(_bar(3, 20, 0.0, 13.5, 13.5)[None])["slant"][0]) < 1e-12


def test_size_is_the_drawn_height():
  # Pixel-aligned heights (the ink evenly over whole rows): exact.
  bars = [_bar(3, h, 0.3, 13.5, 13.5 if h % 2 == 0 else 14.0) for h in (5, 10, 16, 21, 26)]
  np.testing.assert_allclose(captions.measure(np.stack(bars))["size"],
                             np.array([5, 10, 16, 21, 26]) / H, rtol=0, atol=1e-9)
  # Sub-pixel ends: each end row's partial ink is off by at most half a row, and
  # its hardened value loses coverage below 1/4: within 1 row.
  rng = np.random.default_rng(2)
  ys = rng.uniform(-0.5, 0.5, size=8)
  got = captions.measure(np.stack([_bar(2, 18, 0.0, 13.5, 13.5 + dy) for dy in ys]))["size"]
  assert np.all(np.abs(got * H - 18) <= 1.0), got * H


def test_mirror_negates_slant_and_keeps_the_rest():
  images, _ = _digits()
  images = np.concatenate([-np.ones((1, 8, 8)), images[:200]])
  a = captions.measure(images)
  lr = captions.measure(images[:, :, ::-1])
  ud = captions.measure(images[:, ::-1, :])
  finite = np.isfinite(a["slant"])
  assert finite[1:].all() and not finite[0]  # The first one is blank.
  # Exact up to the order of floating-point sums (the coordinates are centred,
  # so a mirror maps each one to its exact negative).
  np.testing.assert_allclose(lr["slant"][finite], -a["slant"][finite], rtol=0, atol=1e-12)
  np.testing.assert_allclose(ud["slant"][finite], -a["slant"][finite], rtol=0, atol=1e-12)
  for name in ("thickness", "size"):
    np.testing.assert_allclose(lr[name][finite], a[name][finite], rtol=1e-12)
  assert np.abs(a["slant"][finite]).max() > 0.2  # Not trivially zero.


def test_empty_nan_and_shapes():
  blank = -np.ones((3, 28, 28))
  blank[1, 5, 5] = -0.6  # Below w = 1/4: background, not ink.
  blank[2, 3, 4] = np.nan
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = captions.measure(blank)
    line = -np.ones((1, 28, 28))
    line[0, 10, 4:20] = 1.0  # All ink in one row: no slope.
    one_row = captions.measure(line)
  for name in captions.ATTRIBUTES:
    assert np.isnan(got[name]).all(), name
    assert got[name].dtype == np.float64 and got[name].shape == (3,)
  assert np.isnan(one_row["slant"][0]) and one_row["size"][0] == pytest.approx(1 / 28)
  assert one_row["thickness"][0] == pytest.approx(1.0, abs=0.1)
  images, _ = _digits()
  a, b = captions.measure(images[:20]), captions.measure(images[:20, :, :, None])
  for name in captions.ATTRIBUTES:
    np.testing.assert_array_equal(a[name], b[name])
  for bad in (images[0], images[:2, :, :, None].repeat(3, -1)):
    with pytest.raises(ValueError, match=r"\[N, H, W\] or \[N, H, W, 1\]"):
      captions.measure(bad)


def test_noisy_samples_measure_like_clean_ones():
  # Gaussian noise of std 0.1 (clipped to [-1, 1], as saved samples are): the
  # background stays below w = 1/4 (5 sigma), so the words hardly change.
  images, _ = _digits()
  clean = captions.measure(images)
  bins = captions.AttributeBins.fit(clean)
  rng = np.random.default_rng(3)
  noisy = captions.measure(np.clip(images + 0.1 * rng.standard_normal(images.shape), -1, 1))
  for name in captions.ATTRIBUTES:
    same = np.mean([p[name] == q[name] for p, q in zip(bins.words(clean), bins.words(noisy))])
    assert same > 0.9, (name, same)


# ----------------------------------------------------------------- bins on real digits


def test_tertiles_of_the_8x8_digits_and_dilation():
  images, _ = _digits()
  attrs = captions.measure(images)
  for name in captions.ATTRIBUTES:  # Continuous: no ties to break the tertiles.
    assert len(np.unique(attrs[name])) > 0.99 * len(images), name
  fractions, n_fit, n_held = _split_fractions(attrs)
  tol = _three_se(n_fit, n_held)  # 0.067 for 898 + 899
  for name, f in fractions.items():
    np.testing.assert_allclose(f, 1 / 3, atol=tol, err_msg=name)
  thicker = captions.measure(_dilate(images))["thickness"] > attrs["thickness"]
  assert thicker.mean() > 0.95


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")),
                    reason=f"no MNIST idx files in {MNIST_DIR}: `python -m diffusion.data "
                           "prepare mnist` puts them there (the digits test above runs the "
                           "same checks on the 8x8 digits)")
def test_tertiles_of_mnist_and_dilation():
  images = read_idx(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz"))[:4000]
  images = images.astype(np.float64) / 255 * 2 - 1
  attrs = captions.measure(images)
  fractions, n_fit, n_held = _split_fractions(attrs)
  tol = _three_se(n_fit, n_held)  # 0.045 for 2000 + 2000
  for name, f in fractions.items():
    np.testing.assert_allclose(f, 1 / 3, atol=tol, err_msg=name)
  # MNIST's training set alternates two writer populations: the even-indexed
  # digits are upright (median slant 0.00), the odd ones lean right (0.23 over
  # all 60,000), so the held-out half above is a random half, not a parity split.
  assert np.median(attrs["slant"][1::2]) - np.median(attrs["slant"][::2]) > 0.15
  thicker = captions.measure(_dilate(images[:1000]))["thickness"] > attrs["thickness"][:1000]
  assert thicker.mean() > 0.95


def test_bins_words_and_json():
  attrs = {"thickness": np.arange(9.0), "slant": np.linspace(-1, 1, 9),
           "size": np.array([0.5] * 3 + [0.6] * 3 + [0.7] * 3)}
  bins = captions.AttributeBins.fit(attrs)
  assert bins.thickness == pytest.approx((8 / 3, 16 / 3))
  words = bins.words(attrs)
  assert [w["thickness"] for w in words] == ["thin"] * 3 + [None] * 3 + ["thick"] * 3
  assert [w["slant"] for w in words] == ["left"] * 3 + [None] * 3 + ["right"] * 3
  assert [w["size"] for w in words] == ["small"] * 3 + [None] * 3 + ["large"] * 3
  assert bins.words({"thickness": [np.nan], "slant": [np.nan], "size": [np.nan]}) == [
      {"thickness": None, "slant": None, "size": None}]
  at = {name: [getattr(bins, name)[0], getattr(bins, name)[1]] for name in captions.ATTRIBUTES}
  assert bins.words(at) == [{"thickness": None, "slant": None, "size": None}] * 2  # Ties: middle.
  again = captions.AttributeBins.from_dict(json.loads(json.dumps(bins.to_dict())))
  assert again == bins
  with pytest.raises(KeyError, match="thickness, slant, size"):
    captions.AttributeBins.fit({"thickness": [1.0]})
  with pytest.raises(ValueError, match="0 < low < high < 1"):
    captions.AttributeBins.fit(attrs, low=0.7, high=0.3)
  with pytest.raises(ValueError, match="slant has no finite value"):
    captions.AttributeBins.fit(dict(attrs, slant=np.full(9, np.nan)))
  with pytest.raises(KeyError, match="missing size"):
    captions.AttributeBins.from_dict({"thickness": [1, 2], "slant": [0, 1]})


# ----------------------------------------------------------------- captions and parse


def test_caption_examples():
  assert captions.caption(7, {}) == "a 7"
  assert captions.caption(7, {"thickness": "thin"}) == "a thin 7"
  assert captions.caption(3, {"size": "large", "thickness": "thick", "slant": "left"}) == (
      "a large thick 3 slanted to the left")
  assert captions.caption(0, {"size": "small", "slant": "right"}) == (
      "a small 0 slanted to the right")
  assert captions.caption(np.int64(8), {"slant": None}) == "an 8"
  assert captions.caption(8, {"thickness": "thin"}) == "a thin 8"
  for label in (10, -1, 2.0, True, "3"):
    with pytest.raises(ValueError, match="digit 0..9"):
      captions.caption(label, {})
  with pytest.raises(ValueError, match="'thin', 'thick'"):
    captions.caption(3, {"thickness": "fat"})


def test_caption_parse_round_trip_on_the_whole_grammar():
  seen = set()
  for digit, size, thickness, slant in itertools.product(
      range(10), (None, "small", "large"), (None, "thin", "thick"), (None, "left", "right")):
    words = {"size": size, "thickness": thickness, "slant": slant}
    text = captions.caption(digit, words)
    parsed = captions.parse(text)
    assert parsed == dict(words, digit=digit), text
    assert captions.caption(parsed["digit"], parsed) == text
    seen.add(text)
  assert len(seen) == 10 * 3 * 3 * 3
  # Also read: case, spacing, a final ".", the article, adjectives in either order.
  assert captions.parse("  A  Thick LARGE 3 slanted to the Left. ") == {
      "digit": 3, "thickness": "thick", "slant": "left", "size": "large"}
  assert captions.parse("a 8")["digit"] == 8 and captions.parse("5")["digit"] == 5


@pytest.mark.parametrize("junk", [
    "", "   ", "hello", "a cat", "a 12", "a thin", "a thin thin 3", "a small large 3",
    "a 3 slanted to the up", "a 3 slanted", "3 3", "a 3 thin", "slanted to the left",
    "a thin 7 on the moon", "a seven", None, 42, b"a 3", ["a", "3"]])
def test_parse_of_junk_is_all_none(junk):
  assert captions.parse(junk) == {"digit": None, "thickness": None, "slant": None,
                                  "size": None}


# ----------------------------------------------------------------- agreement


def test_agreement_self_one_and_shuffled_chance():
  images, labels = _digits()
  bins = captions.AttributeBins.fit(captions.measure(images))
  prompts = captions.captions_for(images, labels, bins)
  words = bins.words(captions.measure(images))
  got = captions.agreement(prompts, images, bins, predicted_labels=labels)
  assert got["n"] == len(images) and got["unparsed"] == 0
  for name in captions.ATTRIBUTES + ("digit",):
    assert got[name]["agreement"] == 1.0, name
  for name in captions.ATTRIBUTES:
    assert got[name]["count"] == sum(w[name] is not None for w in words)
    assert got[name]["chance"] == pytest.approx(1 / 3)
  assert got["digit"] == {"agreement": 1.0, "count": len(images), "chance": 0.1}
  # Shuffled pairings: each image's word is independent of its prompt's, so
  # agreement ~ the fraction of images with the named word (1/3 here, the
  # bins being fitted on these images), with binomial standard error
  # sqrt(p (1 - p) / count) (a permutation's is a little smaller): 3 SE.
  perm = np.random.default_rng(4).permutation(len(images))
  shuffled = captions.agreement(prompts, images[perm], bins, predicted_labels=labels[perm])
  for name in captions.ATTRIBUTES + ("digit",):
    p, count = shuffled[name]["chance"], shuffled[name]["count"]
    assert abs(shuffled[name]["agreement"] - p) < 3 * math.sqrt(p * (1 - p) / count), (
        name, shuffled[name])


def test_agreement_counts_only_named_attributes():
  images, labels = _digits()
  bins = captions.AttributeBins.fit(captions.measure(images))
  thin = next(i for i, w in enumerate(bins.words(captions.measure(images)))
              if w["thickness"] == "thin")
  batch = np.stack([images[thin], -np.ones((8, 8)), images[thin]])
  got = captions.agreement(["a thin 3", "a thin 3", "draw something"], batch, bins)
  assert got["unparsed"] == 1 and "digit" not in got
  assert got["thickness"] == {"agreement": 0.5, "count": 2, "chance": pytest.approx(1 / 3)}
  assert got["slant"]["count"] == 0 and math.isnan(got["slant"]["agreement"])
  with pytest.raises(ValueError, match="2 prompts but 3 images"):
    captions.agreement(["a 3", "a 4"], batch, bins)
  with pytest.raises(ValueError, match="2 predicted_labels"):
    captions.agreement(["a 3"] * 3, batch, bins, predicted_labels=[3, 3])


# ----------------------------------------------------------------- caption files


def _touch(path, text=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("" if text is None else text)


def test_caption_files_both_layouts(tmp_path):
  txt, jsonl = tmp_path / "txt", tmp_path / "jsonl"
  for name, text in (("a.png", " a thin 7\n"), ("b.jpg.png", "an 8")):
    _touch(str(txt / name))
    _touch(str(txt / name[:-4]) + ".txt", text)
  for name in ("x.png", "y.png", "z.png"):
    _touch(str(jsonl / name))
  lines = [{"file": "y.png", "caption": "a 2 "}, {"file": "./x.png", "caption": "a large 1"},
           {"file": "other.png", "caption": "unused"}]
  _touch(str(jsonl / "captions.jsonl"), "\n".join(json.dumps(d) for d in lines) + "\n\n")
  _touch(str(jsonl / "z.txt"), "a 0")  # Both layouts in one folder.
  paths = [txt / "a.png", str(txt / "b.jpg.png"), jsonl / "x.png", jsonl / "y.png",
           jsonl / "z.png"]
  assert captions.read_caption_files(paths) == ["a thin 7", "an 8", "a large 1", "a 2", "a 0"]


def test_caption_files_missing_none_and_bad(tmp_path):
  for name in ("a.png", "b.png", "c.png"):
    _touch(str(tmp_path / name))
  paths = [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
  assert captions.read_caption_files(paths) is None
  _touch(str(tmp_path / "a.txt"), "a 1")
  _touch(str(tmp_path / "captions.jsonl"), json.dumps({"file": "c.png", "caption": "a 3"}))
  with pytest.raises(ValueError) as e:
    captions.read_caption_files(paths)
  message = str(e.value)
  assert paths[1] in message and "2 of 3" in message
  assert str(tmp_path / "b.txt") in message and str(tmp_path / "captions.jsonl") in message
  _touch(str(tmp_path / "b.txt"), "a 2")
  assert captions.read_caption_files(paths) == ["a 1", "a 2", "a 3"]
  _touch(str(tmp_path / "c.txt"), "a 4")
  with pytest.raises(ValueError, match="two different captions"):
    captions.read_caption_files(paths)
  os.remove(tmp_path / "c.txt")
  _touch(str(tmp_path / "captions.jsonl"), '{"file": "c.png", "caption": "a 3"}\n{oops\n')
  with pytest.raises(ValueError, match=r"captions.jsonl:2 is not JSON"):
    captions.read_caption_files(paths)
  _touch(str(tmp_path / "captions.jsonl"), '{"file": "c.png"}\n')
  with pytest.raises(ValueError, match=r"captions.jsonl:1: .*both strings"):
    captions.read_caption_files(paths)
