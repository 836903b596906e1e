"""Dataset sources and preprocessing for `diffusion.data`: every source gives
``(images, labels, levels)`` (module doc of `data`; `load`).

Sources (`config.data.source`): "digits" (scikit-learn's 8x8 digits, offline);
"files" (`data_dir` = MNIST idx files, an .npz with "image"/"x" [+ "label"/"y"],
or an image folder, one subfolder per class giving labels in sorted order, and
`<data_dir>/<split>/` used when present); "tfds" (a prepared TFDS dataset
`config.data.name`, read by `tfds.data_source`: array_record, no TensorFlow).

Preprocessing: channels converted to `config.channels` (gray -> RGB repeats,
RGB -> gray by Pillow's ITU-R 601 luma, alpha dropped); other sizes are
area-downscaled (Pillow BOX, rounded) to `config.image_size`, after a crop to
the largest central square if `config.crop == "center"`; never upscaled. Image
folders and TFDS decode lazily per batch (`LazyExamples`, threads); the other
sources are preprocessed once, in memory.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from diffusion.core.checks import why as _why
from diffusion.data.idx import DataError, read_idx as _read_idx

SOURCES = ("digits", "files", "tfds")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")



_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------
# Preprocessing: integer pixels HWC -> config.channels, image_size x image_size.
# --------------------------------------------------------------------------


def _convert_channels(images: np.ndarray, channels: int, what: str) -> np.ndarray:
  """[..., C] integer pixels -> [..., channels]; raises if impossible."""
  c = images.shape[-1]
  if c == channels:
    return images
  if c == 4:  # RGBA: drop alpha.
    images, c = images[..., :3], 3
  if c == channels:
    return images
  if c == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if c == 3 and channels == 1:  # Pillow's convert("L"): ITU-R 601-2 luma, rounded.
    x = images.astype(np.int64)
    luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(images.dtype)[..., None]
  raise ValueError(f"config.data.channels={channels} but the {what} images have "
                   f"{images.shape[-1]} channels; only 1 (gray), 3 (RGB) and 4 (RGBA) "
                   "channels convert, to 1 or 3")


CROPS = ("none", "center")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Area-averaging resize of an [H, W, C] integer image to size x size, rounded."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = [np.asarray(Image.fromarray(image[..., k].astype(np.float32))
                    .resize((size, size), Image.Resampling.BOX))
         for k in range(image.shape[-1])]
  return np.rint(np.stack(out, axis=-1)).astype(image.dtype)


def fit(images: np.ndarray, size: int, channels: int, what: str,
         crop: str = "center", pad: int = 0) -> np.ndarray:
  """[N, H, W, C] (or one [H, W, C]) -> channels converted, cropped, downscaled to
  ``size - 2 pad``, then padded by `pad` pixels of value 0 on every side (``data.pad``:
  MNIST's 28x28 -> 32x32)."""
  if pad:
    if not 0 < 2 * pad < size:
      raise ValueError(f"config.data.pad={pad} must leave an image: 0 <= 2 pad < "
                       f"image_size={size}")
    inner = fit(images, size - 2 * pad, channels, what, crop)
    width = ((pad, pad), (pad, pad), (0, 0))
    return np.pad(inner, width if inner.ndim == 3 else ((0, 0),) + width)
  if crop not in CROPS:
    raise ValueError(f"config.data.crop={crop!r} is unknown; valid: {', '.join(CROPS)}")
  single = images.ndim == 3
  if single:
    images = images[None]
  images = _convert_channels(images, channels, what)
  _, h, w, _ = images.shape
  if (h, w) != (size, size):
    if min(h, w) < size:
      raise ValueError(f"config.data.image_size={size} but the {what} images are {h}x{w}; "
                       "images are only cropped and downscaled, never upscaled: use "
                       f"image_size <= {min(h, w)}")
    if crop == "center":  # The largest central square.
      side = min(h, w)
      top, left = (h - side) // 2, (w - side) // 2
      images, h, w = images[:, top:top + side, left:left + side], side, side
    if (h, w) != (size, size):
      images = np.stack([_resize(im, size) for im in images])
  return images[0] if single else images


def _decode(value: Any, size: int, channels: int, what: str,
            crop: str = "center", pad: int = 0) -> np.ndarray:
  """An image as an array [H, W(, C)], encoded bytes, or a path -> fitted uint8."""
  if isinstance(value, (bytes, str, os.PathLike)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    src = io.BytesIO(value) if isinstance(value, bytes) else value
    with Image.open(src) as im:
      value = np.asarray(im.convert("L" if channels == 1 else "RGB"))
  value = np.asarray(value)
  if value.ndim == 2:
    value = value[..., None]
  if value.ndim != 3 or not np.issubdtype(value.dtype, np.integer):
    raise ValueError(f"{what}: expected an integer image [H, W, C], got {value.dtype} "
                     f"{value.shape}")
  return fit(value, size, channels, what, crop, pad)


class LazyExamples:
  """Random-access examples; `get(i)` decodes and fits example i: (image, label)."""

  def __init__(self, n: int, get: Callable[[int], tuple[np.ndarray, int]], *,
               threads: int = 8):
    self.n = n
    self.get = get
    self.threads = threads
    self._pool = None
    self.files: list[str] | None = None  # Image folders: example i's file.

  def __len__(self) -> int:
    return self.n

  def take(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    idx = [int(i) for i in idx]
    if self.threads > 1 and len(idx) > 1:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)
      pairs = list(self._pool.map(self.get, idx))
    else:
      pairs = [self.get(i) for i in idx]
    return (np.stack([p[0] for p in pairs]),
            np.asarray([p[1] for p in pairs], np.int32))


# --------------------------------------------------------------------------
# Loading: every source gives (images, labels, levels): images an integer array
# [N, H, W, C] (labels int32 [N]) or a LazyExamples (labels None).
# --------------------------------------------------------------------------


def crop_mode(config) -> str:
  return config.get("crop", "none")


def _load_digits():
  """scikit-learn's 1,797 digits: ``(images [N, 8, 8, 1] int64 0..16, labels, 17)``.

  Read from the csv that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``,
  64 pixel values then the label per row, as `sklearn.datasets.load_digits`
  reads it) without importing scikit-learn, whose import costs ~1.5 s per
  process here; falls back to `load_digits` if the file is not where expected.
  """
  spec = importlib.util.find_spec("sklearn")  # Locates the package; runs none of it.
  csv = None if spec is None or spec.origin is None else (
      pathlib.Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz")
  if csv is not None and csv.exists():
    data = np.loadtxt(csv, delimiter=",")
    flat, target = data[:, :-1], data[:, -1]
  else:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    flat, target = digits.data, digits.target
  images = flat.reshape(-1, 8, 8).astype(np.int64)[..., None]  # values 0..16
  return images, target.astype(np.int32), 17


def _find(directory: str, name: str) -> str | None:
  for candidate in (name, name + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  return None


def _load_mnist_dir(directory: str, split: str):
  images_name, labels_name = _MNIST_FILES[split]
  images = _read_idx(_find(directory, images_name))
  if images.ndim == 3:
    images = images[..., None]
  labels_path = _find(directory, labels_name)
  labels = (_read_idx(labels_path).astype(np.int32) if labels_path
            else np.zeros(len(images), np.int32))
  return images, labels, 256


def _load_npz(path: str):
  """``(images, labels, 256)`` of an .npz; `DataError` naming the file if it cannot be read."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle, truncation errors)
    raise DataError(f"{path} cannot be read as an .npz file ({_why(e)}); expected "
                    "np.savez output with key 'image' (or 'x') and optionally 'label' (or 'y')"
                    ) from e
  image_key = next((k for k in ("image", "x") if k in arrays), None)
  if image_key is None:
    raise KeyError(f"{path} has keys {sorted(arrays)}; expected 'image' or 'x' "
                   "(and optionally 'label' or 'y')")
  images = arrays[image_key]
  label_key = next((k for k in ("label", "y") if k in arrays), None)
  labels = (arrays[label_key].astype(np.int32) if label_key
            else np.zeros(len(images), np.int32))
  if images.ndim == 3:
    images = images[..., None]
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(f"{path}: '{image_key}' has dtype {images.dtype}; expected integer "
                     "pixels 0..255 (uint8)")
  if len(labels) != len(images):
    raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
  return images, labels, 256


def _check_image(path: str) -> str | None:
  """Why the image file at `path` cannot be read (header and, where the format
  has them, checksums: Pillow's verify), or None."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.verify()
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many kinds)
    return _why(e)
  return None


def check_image_files(files: Sequence[str], threads: int = 8) -> None:
  """`DataError` listing the files (up to 5, and how many) that `_check_image` rejects;
  checked in parallel, once, when the folder is loaded."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    problems = [(f, why) for f, why in zip(files, pool.map(_check_image, files)) if why]
  if problems:
    shown = "; ".join(f"{f} ({why})" for f, why in problems[:5])
    more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
    raise DataError(f"{len(problems)} of {len(files)} image files cannot be read: "
                    f"{shown}{more}; remove or replace them")


def _image_files(directory: str) -> list[str]:
  return sorted(os.path.join(root, name)
                for root, _, names in os.walk(directory, followlinks=True)
                for name in names if name.lower().endswith(IMAGE_EXTENSIONS))


def _only_train(split: str, what: str, fix: str = "") -> None:
  """ValueError unless `split` is "train": `what` has one split, its training images,
  so scoring them as another split would silently score training images."""
  if split != "train":
    raise ValueError(
        f"config.data.split={split!r}: {what} has one split, its training images; scoring "
        f"them as {split!r} (eval.bpd_split, eval.reference_split, eval.baseline_split) "
        f"would score training images; {fix}set that key to 'train' to do so knowingly")


def _load_image_folder(directory: str, config):
  """Image files under `directory`; one subfolder per class gives the labels."""
  if os.path.isdir(os.path.join(directory, config.split)):
    directory = os.path.join(directory, config.split)
  else:  # The folder's images are its one split: the training set.
    _only_train(config.split, f"image folder {directory!r} (no {config.split}/ subfolder)",
                f"add {directory}/{config.split}/ (and {directory}/train/), or ")
  subdirs = sorted(d for d in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, d)))
  classes = [d for d in subdirs if _image_files(os.path.join(directory, d))]
  if classes:
    loose = [f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
      raise ValueError(f"image folder {directory!r} has class subfolders {classes} and also "
                       f"images at its top level ({loose[0]}, ...); put every image in a "
                       "class subfolder, or none")
    files, labels = [], []
    for label, name in enumerate(classes):
      found = _image_files(os.path.join(directory, name))
      files += found
      labels += [label] * len(found)
  else:
    files = _image_files(directory)
    labels = [0] * len(files)
  size, channels, crop = config.image_size, config.channels, crop_mode(config)
  pad = config.get("pad", 0)

  check_image_files(files)

  def get(i):
    try:
      return _decode(files[i], size, channels, repr(files[i]), crop, pad), labels[i]
    except (OSError, SyntaxError) as e:  # Pillow: truncated or corrupt data.
      raise DataError(f"{files[i]} cannot be decoded ({_why(e)})") from e

  get(0)  # Fail now, not mid-training, if the images cannot be fitted.
  examples = LazyExamples(len(files), get)
  examples.files = files  # Their captions (`data.captions.read_caption_files`) sit beside them.
  return examples, None, 256


def _load_files(config):
  path = config.data_dir
  if not path:
    raise ValueError("config.data.source='files' needs config.data.data_dir: a directory "
                     "of MNIST idx files or of images, or an .npz file")
  if os.path.isdir(path):
    if _find(path, _MNIST_FILES[config.split][0]):
      return _load_mnist_dir(path, config.split)
    if _image_files(path):
      return _load_image_folder(path, config)
    raise FileNotFoundError(
        f"config.data.data_dir={path!r} has neither {_MNIST_FILES[config.split][0]}[.gz] "
        f"nor image files; expected a directory of MNIST idx files "
        f"({', '.join(sum(_MNIST_FILES.values(), ()))}, optionally gzipped), a directory "
        f"of images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}; optionally one "
        "subfolder per class), or an .npz file")
  if path.endswith(".npz") and os.path.isfile(path):
    _only_train(config.split, f"the .npz file {path!r}")
    return _load_npz(path)
  if not os.path.exists(path):
    from diffusion.data import prepare  # pylint: disable=g-import-not-at-top
    raise FileNotFoundError(f"config.data.data_dir={path!r} does not exist; "
                            f"{prepare.how_to_get(config.name)}")
  raise FileNotFoundError(
      f"config.data.data_dir={path!r} is neither a directory (of MNIST idx files or of "
      "images) nor an .npz file")


def _tfds_not_available(name: str, data_dir: str, why: str) -> ValueError:
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  return ValueError(
      f"config.data.source='tfds': dataset {name!r} is not prepared in data_dir={where!r} "
      f"({why}). Downloading and preparing it needs network access and TensorFlow, which "
      "this machine may not have. Alternatives: prepare it elsewhere with "
      f"tfds.builder({name!r}, file_format='array_record').download_and_prepare() and point "
      "config.data.data_dir at that data_dir; or use source='digits' (built-in, offline) or "
      "source='files' (MNIST idx files, an .npz or an image folder in config.data.data_dir)")


def _load_tfds(config, data_source=None):
  """`config.name` from TFDS as a LazyExamples; `data_source` overrides the reading."""
  name, data_dir = config.name, config.data_dir or None
  if data_source is None:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends: no code and no files.
      why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
      raise _tfds_not_available(name, config.data_dir, why) from None
    if not builder.is_prepared():
      raise _tfds_not_available(name, config.data_dir, f"no {builder.data_path}")
    if config.split not in builder.info.splits:
      raise ValueError(f"config.data.split={config.split!r} is not a split of TFDS dataset "
                       f"{name!r}; it has {sorted(builder.info.splits)}")
    try:
      data_source = builder.as_data_source(split=config.split)
    except Exception as e:
      raise ValueError(
          f"TFDS dataset {name!r} in {builder.data_path} cannot be read with random access "
          f"({type(e).__name__}: {e}); it must be prepared with file_format='array_record' "
          f"(convert a tfrecord copy in place with `tfds convert_format --dataset_version_dir="
          f"{builder.data_path} "
          "--out_file_format=array_record`)") from None
  size, channels, crop = config.image_size, config.channels, crop_mode(config)
  pad = config.get("pad", 0)
  what = f"TFDS {name!r}"
  first = data_source[0]
  if "image" not in first:
    raise KeyError(f"{what} examples have keys {sorted(first)}; expected 'image'")
  _decode(first["image"], size, channels, what, crop, pad)  # Fail now if it cannot be fitted.

  def get(i):
    example = data_source[i]
    try:
      image = _decode(example["image"], size, channels, what, crop, pad)
    except (OSError, SyntaxError) as e:
      raise DataError(f"{what} example {i} of split {config.split!r} cannot be decoded "
                      f"({_why(e)})") from e
    return image, int(example.get("label", 0))

  return LazyExamples(len(data_source), get), None, 256


def load(config):
  source = config.source
  if source == "digits":
    _only_train(config.split, "source='digits' (scikit-learn's 1,797 digits)")
    return _load_digits()
  if source == "files":
    return _load_files(config)
  if source == "tfds":
    return _load_tfds(config)
  raise ValueError(f"config.data.source={source!r} is unknown; valid: {', '.join(SOURCES)}")
