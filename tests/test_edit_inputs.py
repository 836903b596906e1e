"""Inputs of the editing applications (issue 17): images and inpainting masks, with
their one-line errors (`diffusion/data/edit_inputs.py`)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion.data import edit_inputs as ei


def test_images_from_a_file_a_folder_and_an_npz(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
  for i, p in enumerate(pixels):
    Image.fromarray(p).save(tmp_path / f"{i}.png")
  want = pixels[..., None].astype(np.float32) / 255 * 2 - 1  # Exact: p / 255 * 2 - 1.
  np.testing.assert_array_equal(ei.read_images(tmp_path / "1.png", (6, 6, 1)), want[1:2])
  np.testing.assert_array_equal(ei.read_images(tmp_path, (6, 6, 1)), want)
  np.savez(tmp_path / "u8.npz", arr_0=pixels[..., None])
  np.testing.assert_array_equal(ei.read_images(tmp_path / "u8.npz", (6, 6, 1)), want)
  np.savez(tmp_path / "f.npz", images=want[:2])
  np.testing.assert_array_equal(ei.read_images(tmp_path / "f.npz", (6, 6, 1)), want[:2])


def test_noisy_float_inputs_may_leave_the_range_but_not_be_nan(tmp_path):
  """Noisy images to denoise (unclipped floats) are read as they are; NaN never."""
  np.savez(tmp_path / "n.npz", images=np.full((1, 6, 6, 1), 2.0, np.float32))
  np.testing.assert_array_equal(ei.read_images(tmp_path / "n.npz", (6, 6, 1), noisy=True), 2.0)
  np.savez(tmp_path / "nan.npz", images=np.full((1, 6, 6, 1), np.nan, np.float32))
  with pytest.raises(ValueError, match="float images must be finite"):
    ei.read_images(tmp_path / "nan.npz", (6, 6, 1), noisy=True)


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "missing.png", r"does not exist: give an image file, a folder"),
    (lambda d: d, r"holds no image files"),
    (lambda d: (np.savez(d / "x.npz", other=np.zeros(2)), d / "x.npz")[1], r"expected 'images'"),
    (lambda d: (Image.fromarray(np.zeros((5, 6), np.uint8)).save(d / "a.png"), d / "a.png")[1],
     r"a.png is 5x6x1 but the model takes 6x6x1"),
    (lambda d: (np.savez(d / "b.npz", images=np.full((1, 6, 6, 1), 2.0)), d / "b.npz")[1],
     r"float images must lie in \[-1, 1\]"),
    (lambda d: (open(d / "c.png", "w").write("no image"), d / "c.png")[1], r"cannot be read"),
])
def test_bad_inputs_are_one_line(tmp_path, make, match):
  with pytest.raises(ValueError, match=match) as e:
    ei.read_images(make(tmp_path), (6, 6, 1))
  assert "\n" not in str(e.value)


def test_built_in_masks():
  half = ei.mask("half", (8, 8))
  assert half[:4].min() == 1 and half[4:].max() == 0  # Top kept, bottom generated.
  box = ei.mask("box", (8, 8))
  assert box.sum() == 64 - 16 and box[2:6, 2:6].max() == 0  # A centred 4x4 square.
  s1, s2 = ei.mask("strokes", (28, 28), seed=1), ei.mask("strokes", (28, 28), seed=1)
  np.testing.assert_array_equal(s1, s2)  # Seeded.
  assert set(np.unique(s1)) == {0.0, 1.0}
  assert 0.1 < 1 - s1.mean() < 0.4  # Part of the image: 17-27% for seeds 0-5 (width 2).
  assert not np.array_equal(s1, ei.mask("strokes", (28, 28), seed=2))


def test_mask_files_and_their_errors(tmp_path):
  m = np.full((6, 6), 255, np.uint8)
  m[3:] = 0
  Image.fromarray(m).save(tmp_path / "m.png")
  np.testing.assert_array_equal(ei.mask(str(tmp_path / "m.png"), (6, 6)), (m == 255).astype(np.float32))
  with pytest.raises(ValueError, match=r"is 6x6 but the images are 8x8"):
    ei.mask(str(tmp_path / "m.png"), (8, 8))
  m[0, 0] = 128
  Image.fromarray(m).save(tmp_path / "gray.png")
  with pytest.raises(ValueError, match=r"black \(0: generate\) and white \(255: keep\) only"):
    ei.mask(str(tmp_path / "gray.png"), (6, 6))
  with pytest.raises(ValueError, match=r"neither a built-in mask \(half, box, strokes\)"):
    ei.mask("circle", (6, 6))
