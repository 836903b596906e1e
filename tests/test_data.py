"""diffusion.data: image folders, crop/resize/channels, TFDS (without TensorFlow),
real MNIST idx files, and per-process slicing."""
import functools
import gzip
import io
import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
from PIL import Image

from configs import smoke
from diffusion.data import iterator as data
from diffusion.data import prepare as data_prepare
from diffusion.data import sources as data_sources

# The real MNIST idx files: where `python -m diffusion.data prepare mnist` puts them,
# else this development machine's copy (a clone elsewhere has neither: then the
# real-data test is skipped; the idx reader is proven on generated files).
MNIST_DIR = next((d for d in (data_prepare.dataset_dir("mnist"), "/work/shared/data/mnist")
                  if os.path.isdir(d)), data_prepare.dataset_dir("mnist"))


def _config(**kw):
  config = smoke.get_config().data
  config.update(dequantize=False, random_flip=False, **kw)
  return config


def _to_uint8(images):
  return np.rint((images + 1) / 2 * 255).astype(np.int64)


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


# ------------------------------------------------------------- image folders


def test_image_folder_labels_from_subfolders(tmp_path):
  colours = {"cat/a.png": 10, "cat/b.jpg.png": 20, "dog/c.png": 30, "dog/sub/d.png": 40,
             "zebra/e.PNG": 50}
  for name, v in colours.items():
    _png(tmp_path / name, np.full((6, 6, 3), v))
  (tmp_path / "empty_dir").mkdir()  # Holds no images: not a class.
  config = _config(source="files", data_dir=str(tmp_path), image_size=6, channels=3,
                   batch_size=5)
  batch = next(data.create(config, seed=0))
  assert batch["image"].shape == (5, 6, 6, 3)
  got = {int(_to_uint8(im)[0, 0, 0]): int(lab) for im, lab in zip(batch["image"], batch["label"])}
  assert got == {10: 0, 20: 0, 30: 1, 40: 1, 50: 2}  # cat, dog, zebra in sorted order.


def test_image_folder_flat_split_and_gray_to_rgb(tmp_path):
  for i in range(3):
    _png(tmp_path / "train" / f"{i}.png", np.full((8, 8), 100 + i))  # Grayscale PNGs.
  _png(tmp_path / "test" / "x.png", np.full((8, 8), 7))
  config = _config(source="files", data_dir=str(tmp_path), image_size=8, channels=3,
                   batch_size=3)
  batch = next(data.create(config, seed=1))
  assert batch["label"].tolist() == [0, 0, 0]
  pix = _to_uint8(batch["image"])
  assert pix.shape == (3, 8, 8, 3) and (pix == pix[:, :1, :1, :1]).all()
  assert sorted(pix[:, 0, 0, 0].tolist()) == [100, 101, 102]
  config.update(split="test", batch_size=1)
  assert _to_uint8(next(data.create(config, seed=0))["image"]).max() == 7
  # A folder without test/ is one split, its training images: "test" is refused,
  # so bits/dim or a data row never score training images as test images.
  shutil.rmtree(tmp_path / "test")
  shutil.move(str(tmp_path / "train"), str(tmp_path / "flat"))
  config.update(data_dir=str(tmp_path / "flat"))
  with pytest.raises(ValueError, match=r"\(no test/ subfolder\) has one split, its training "
                                       r"images.*set that key to 'train'"):
    data.create(config, seed=0)
  config.update(split="train", batch_size=3)
  assert next(data.create(config, seed=0))["image"].shape == (3, 8, 8, 3)


def test_files_errors(tmp_path):
  config = _config(source="files", data_dir=str(tmp_path), image_size=8, channels=1)
  with pytest.raises(FileNotFoundError, match="neither train-images-idx3-ubyte.*image"):
    data.create(config, seed=0)  # Empty folder.
  config.data_dir = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
    data.create(config, seed=0)
  _png(tmp_path / "a" / "x.png", np.zeros((4, 4)))
  _png(tmp_path / "loose.png", np.zeros((4, 4)))
  config.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="class subfolders"):
    data.create(config, seed=0)
  config.source = "hdf5"
  with pytest.raises(ValueError, match="digits, files, tfds"):
    data.create(config, seed=0)


# --------------------------------------------------------- crop/resize/channels


def test_center_crop_and_area_resize_exact():
  blocks = np.kron(np.array([[0, 40], [80, 120]]), np.ones((2, 2), np.int64))  # 4x4
  wide = np.pad(blocks, ((0, 0), (1, 1)), constant_values=255)[..., None]  # 4x6
  np.testing.assert_array_equal(data_sources.fit(wide, 4, 1, "t")[..., 0], blocks)  # crop only
  squashed = data_sources.fit(wide, 2, 1, "t", crop="none")  # No crop: means of 2x3 blocks.
  np.testing.assert_array_equal(squashed[..., 0], [[85, 112], [138, 165]])  # (255+0+0)/3...
  np.testing.assert_array_equal(data_sources.fit(wide, 2, 1, "t")[..., 0], [[0, 40], [80, 120]])
  tall = np.transpose(wide, (1, 0, 2))  # 6x4: crops rows instead.
  np.testing.assert_array_equal(data_sources.fit(tall, 2, 1, "t")[..., 0], [[0, 80], [40, 120]])
  checker = (np.indices((4, 4)).sum(0) % 2 * 200)[..., None]  # 1-pixel checkerboard
  np.testing.assert_array_equal(data_sources.fit(checker, 2, 1, "t"), np.full((2, 2, 1), 100))
  np.testing.assert_array_equal(data_sources.fit(checker, 1, 1, "t"), [[[100]]])
  with pytest.raises(ValueError, match="image_size=5 but the t images are 4x6.*upscaled"):
    data_sources.fit(wide, 5, 1, "t")
  with pytest.raises(ValueError, match="crop='middle'.*none, center"):
    data_sources.fit(wide, 2, 1, "t", crop="middle")


def test_resize_through_create_with_npz(tmp_path):
  img = np.zeros((3, 6, 8), np.uint8)
  img[:, :, 1:7] = np.kron(np.array([[0, 60], [120, 180]]), np.ones((3, 3)))  # centre 6x6
  np.savez(tmp_path / "d.npz", image=img, label=np.array([1, 2, 3]))
  config = _config(source="files", data_dir=str(tmp_path / "d.npz"), image_size=2,
                   channels=3, batch_size=3, crop="center")
  batch = next(data.create(config, seed=0))
  assert batch["image"].shape == (3, 2, 2, 3)
  np.testing.assert_array_equal(_to_uint8(batch["image"])[..., 1],
                                np.tile([[0, 60], [120, 180]], (3, 1, 1)))


def test_channel_conversion():
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
  gray = data_sources._convert_channels(rgb, 1, "t")
  np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
  np.testing.assert_array_equal(data_sources._convert_channels(gray, 3, "t"), np.repeat(gray, 3, -1))
  rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], -1)
  np.testing.assert_array_equal(data_sources._convert_channels(rgba, 3, "t"), rgb)
  with pytest.raises(ValueError, match="channels=3 but the t images have 2 channels"):
    data_sources._convert_channels(rgb[..., :2], 3, "t")
  with pytest.raises(ValueError, match="channels=4"):
    data_sources._convert_channels(rgb, 4, "t")
  config = _config(source="digits", image_size=8, channels=3, batch_size=4)
  image = next(data.create(config, seed=0))["image"]  # Gray digits as RGB.
  assert image.shape == (4, 8, 8, 3) and (image == image[..., :1]).all()


# -------------------------------------------------------------------- TFDS


def test_tfds_not_prepared_fails_fast_and_names_alternatives(tmp_path):
  config = _config(source="tfds", name="mnist", data_dir=str(tmp_path), image_size=28,
                   channels=1)
  start = time.time()
  with pytest.raises(ValueError) as e:
    data.create(config, seed=0)
  assert time.time() - start < 10
  msg = str(e.value)
  for part in ("'mnist' is not prepared", str(tmp_path), "network", "TensorFlow",
               "config.data.data_dir", "source='digits'", "source='files'"):
    assert part in msg, part
  config.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="no_such_dataset_xyz.*not prepared.*source='files'"):
    data.create(config, seed=0)


@functools.cache  # TFDS registers builder classes by name, once per process.
def _tiny_builder_class():
  """A real TFDS dataset in array_record format, prepared without TensorFlow
  (Tensor features encode with numpy; tfds.features.Image would need TF)."""
  import tensorflow_datasets as tfds

  class TinyDiffusionImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(6, 4, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(8)}

    def _generate_examples(self, n):
      for i in range(n):
        image = np.zeros((6, 4, 3), np.uint8)
        image[1:5] = 10 * i  # Centre 4x4 crop holds 10 * label everywhere.
        yield i, {"image": image, "label": i}

  return TinyDiffusionImages


def test_tfds_array_record_reads_without_tensorflow(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  builder = _tiny_builder_class()(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  config = _config(source="tfds", name="tiny_diffusion_images", data_dir=str(tmp_path),
                   image_size=4, channels=3, batch_size=4, crop="center")
  it = data.create(config, seed=0)
  seen = []
  for _ in range(2):  # One epoch: every example once.
    batch = next(it)
    assert batch["image"].shape == (4, 4, 4, 3)
    pix = _to_uint8(batch["image"])
    np.testing.assert_array_equal(pix, 10 * batch["label"][:, None, None, None]
                                  * np.ones_like(pix))
    seen += batch["label"].tolist()
  assert sorted(seen) == list(range(8)) and it.get_state() == {"epoch": 1, "position": 0}
  assert "tensorflow" not in sys.modules
  config.split = "test"
  with pytest.raises(ValueError, match="split='test'.*'train'"):
    data.create(config, seed=0)


def test_tfds_encoded_images_decode_with_pillow():
  """Builders whose data source hands back encoded bytes (a stand-in source)."""
  def encode(v, size):
    buf = io.BytesIO()
    Image.fromarray(np.full(size, v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
  source = [{"image": encode(10 * i, (6, 8, 3)), "label": i} for i in range(4)]
  source.append({"image": np.full((8, 8, 1), 50, np.uint8)})  # No label: 0.
  config = _config(source="tfds", name="stand_in", image_size=4, channels=1, batch_size=5,
                   crop="center")
  batch = next(data.create(config, seed=0, loaded=data_sources._load_tfds(config, source)))
  got = dict(zip(_to_uint8(batch["image"])[:, 0, 0, 0].tolist(), batch["label"].tolist()))
  assert batch["image"].shape == (5, 4, 4, 1) and got == {0: 0, 10: 1, 20: 2, 30: 3, 50: 0}


# ----------------------------------------------------------- MNIST and hosts


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=(
    f"the real MNIST idx files are not at {MNIST_DIR} on this machine (`python -m "
    "diffusion.data prepare mnist` puts them there); the idx reader itself is proven on "
    "generated files by test_mnist_idx_files"))
def test_real_mnist_idx():
  with gzip.open(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")) as f:
    raw = f.read()
  first = np.frombuffer(raw, np.uint8, count=784, offset=16).astype(np.int64)
  config = _config(source="files", data_dir=MNIST_DIR, image_size=28, channels=1,
                   batch_size=64)
  it = data.create(config, seed=0)
  assert it.images.shape == (60000, 28, 28, 1) and len(it.labels) == 60000
  assert it.labels[0] == 5 and it.images[0].astype(np.int64).sum() == first.sum() == 27525
  perm = it._perm[:64]
  batch = next(it)
  np.testing.assert_array_equal(_to_uint8(batch["image"]), it.images[perm])
  np.testing.assert_array_equal(batch["label"], it.labels[perm])


def _write_folder(path, n=12):
  for i in range(n):
    _png(path / f"c{i % 3}" / f"{i}.png", np.full((5, 7, 3), 20 * i))


@pytest.mark.parametrize("source", ["digits", "folder"])
def test_two_processes_make_the_single_process_batch(tmp_path, source):
  if source == "folder":
    _write_folder(tmp_path)
    config = _config(source="files", data_dir=str(tmp_path), image_size=4, channels=1,
                     batch_size=6)
  else:
    config = _config(source="digits", image_size=8, channels=1, batch_size=6)
  config.update(dequantize=True, random_flip=True)
  single = data.create(config, seed=5)
  parts = [data.create(config, seed=5, process_index=p, process_count=2) for p in (0, 1)]
  for _ in range(3):  # Crosses an epoch boundary for the 12-image folder.
    want = next(single)
    got = [next(p) for p in parts]
    for key in ("image", "label"):
      assert got[0][key].shape[0] == 3
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])
  assert parts[0].get_state() == parts[1].get_state() == single.get_state()


# ------------------------------------------- order, resume, errors (basics)


def test_digits_batches_and_resumable_order():
  config = smoke.get_config().data
  it = data.create(config, seed=3)
  first = [next(it) for _ in range(3)]
  b = first[0]
  assert b["image"].shape == (16, 8, 8, 1) and b["image"].dtype == np.float32
  assert b["label"].shape == (16,) and b["label"].dtype == np.int32
  assert -1.0 <= b["image"].min() and b["image"].max() < 1.0
  state = it.get_state()
  assert state == {"epoch": 0, "position": 3}
  expected = [next(it) for _ in range(2)]
  again = data.create(config, seed=3)
  again.set_state(json.loads(json.dumps(state)))
  for e in expected:
    got = next(again)
    np.testing.assert_array_equal(got["image"], e["image"])
    np.testing.assert_array_equal(got["label"], e["label"])
  other = next(data.create(config, seed=4))
  assert not np.array_equal(other["label"], first[0]["label"])


def test_epochs_are_reshuffled_and_complete():
  config = _config(batch_size=599)  # 1797 = 3 * 599: an epoch is exactly 3 batches.
  it = data.create(config, seed=0)
  epoch0 = np.concatenate([next(it)["label"] for _ in range(3)])
  assert it.get_state() == {"epoch": 1, "position": 0}
  epoch1 = np.concatenate([next(it)["label"] for _ in range(3)])
  assert np.bincount(epoch0).tolist() == np.bincount(epoch1).tolist()
  assert not np.array_equal(epoch0, epoch1)
  images = next(it)["image"]  # Not dequantised: exactly k / 16 mapped to [-1, 1].
  np.testing.assert_array_equal((images + 1) / 2 * 16, np.round((images + 1) / 2 * 16))


def test_mnist_idx_files(tmp_path):
  imgs = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
  header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28))
  with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(header + imgs.tobytes())
  with open(tmp_path / "train-labels-idx1-ubyte", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([3, 1, 4, 1, 5]))
  config = _config(source="files", data_dir=str(tmp_path), image_size=28, channels=1,
                   batch_size=5)
  batch = next(data.create(config, seed=0))
  assert sorted(batch["label"].tolist()) == [1, 1, 3, 4, 5]
  got = _to_uint8(batch["image"][..., 0]).astype(np.uint8)
  assert {g.tobytes() for g in got} == {i.tobytes() for i in imgs}


def test_data_errors_name_the_problem(tmp_path):
  config = smoke.get_config().data
  config.source = "tfds"  # name "digits" is no TFDS dataset.
  with pytest.raises(ValueError, match="source='digits'.*source='files'"):
    data.create(config, seed=0)
  config.source = "imagenet"
  with pytest.raises(ValueError, match="digits, files, tfds"):
    data.create(config, seed=0)
  config.update(source="files", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data.create(config, seed=0)
  config.data_dir = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    data.create(config, seed=0)
  config.update(source="digits", image_size=28)
  with pytest.raises(ValueError, match="image_size=28.*8x8"):
    data.create(config, seed=0)
  config.update(image_size=8, split="val")
  with pytest.raises(ValueError, match="split='val'.*train, test"):
    data.create(config, seed=0)


def test_digits_read_without_sklearn_equal_its_loader():
  """The csv read (no scikit-learn import) gives load_digits' pixels and labels exactly."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  images, labels, levels = data_sources._load_digits()  # pylint: disable=protected-access
  digits = datasets.load_digits()
  np.testing.assert_array_equal(images[..., 0], digits.images)
  np.testing.assert_array_equal(labels, digits.target)
  assert images.shape == (1797, 8, 8, 1) and labels.dtype == np.int32 and levels == 17


def test_every_example_keeps_the_last_partial_batch_and_splits_like_next():
  """1797 digits in global batches of 16 (112 full ones, 5 left over): every
  example once, in epoch 0's order; with 2 processes the slices put together
  are the 1-process batches; the padding rows are zeros and lie past N."""
  config = _config(batch_size=16)
  one = data.create(config, seed=3)
  batches = list(one.every_example())
  assert len(batches) == 113 and all(b["image"].shape == (16, 8, 8, 1) for b in batches)
  rows = np.concatenate([b["image"] for b in batches])
  assert not rows[1797:].any()
  np.testing.assert_array_equal(rows[:16], next(one)["image"])  # Epoch 0's first batch.
  order = np.random.default_rng([3, 0]).permutation(1797)
  stored = one.images[order].astype(np.float32) / 16 * 2 - 1
  np.testing.assert_array_equal(rows[:1797], stored)
  halves = [list(data.create(config, seed=3, process_index=i, process_count=2).every_example(21))
            for i in range(2)]
  joined = np.concatenate([np.concatenate([a["image"], b["image"]]) for a, b in zip(*halves)])
  np.testing.assert_array_equal(joined[:21], rows[:21])
  assert len(joined) == 32 and not joined[21:].any()


def test_pad_frames_the_fitted_image_with_black():
  """``data.pad``: images fitted to image_size - 2 pad, then framed by pad pixels of 0
  (-1 in a batch); a pad that leaves no image is refused naming the key."""
  images = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6, 1)
  out = data_sources.fit(images, 10, 1, "test", "none", pad=2)
  assert out.shape == (2, 10, 10, 1)
  np.testing.assert_array_equal(out[:, 2:8, 2:8], images)
  assert out[:, :2].max() == out[:, 8:].max() == out[:, :, :2].max() == out[:, :, 8:].max() == 0
  one = data_sources.fit(images[0], 10, 1, "test", "none", pad=2)
  np.testing.assert_array_equal(one, out[0])
  with pytest.raises(ValueError, match="config.data.pad=5"):
    data_sources.fit(images, 10, 1, "test", "none", pad=5)
