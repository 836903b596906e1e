"""Getting the datasets the configs read, on any machine:

    python -m diffusion.data prepare mnist                 # download the idx files
    python -m diffusion.data prepare mnist --from DIR      # or copy them from DIR
    python -m diffusion.data prepare cifar10               # TFDS, as array_record
    python -m diffusion.data where mnist                   # print the folder

Where: `data_home()` = ``$DIFFUSION_DATA`` if set, else
``~/.cache/diffusion/data``; a dataset of files goes to ``<data_home>/<name>``
(`dataset_dir`), where the configs look (`configs/mnist_ddpm.py` reads
``dataset_dir("mnist")``; ``--config.data.data_dir`` overrides). TFDS
datasets go to TFDS's data_dir (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

Without network, `prepare` fails in one line naming the URLs and the folder:
copy the files there by other means (``--from``). Every file is checked
(readable idx, the shapes MNIST has) before it counts as prepared.
"""
from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request

from diffusion.core.checks import ConfigError, RunError
from diffusion.data import idx

# Files datasets: name -> (the files, their idx shapes, mirrors tried in order).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (60000, 28, 28),
    "train-labels-idx1-ubyte.gz": (60000,),
    "t10k-images-idx3-ubyte.gz": (10000, 28, 28),
    "t10k-labels-idx1-ubyte.gz": (10000,),
}
FILE_DATASETS = {
    "mnist": (MNIST_FILES, ("https://storage.googleapis.com/cvdf-datasets/mnist/",
                            "https://ossci-datasets.s3.amazonaws.com/mnist/")),
    "fashion_mnist": (MNIST_FILES, (  # The same file names and shapes.
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)),
}
# TFDS datasets the configs read (prepared as array_record, which the reader needs).
TFDS_DATASETS = ("cifar10", "oxford_flowers102", "celeb_a", "fashion_mnist", "mnist")
ENV = "DIFFUSION_DATA"


def data_home() -> str:
  """``$DIFFUSION_DATA``, else ``~/.cache/diffusion/data``."""
  return os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".cache", "diffusion",
                                             "data")


def dataset_dir(name: str) -> str:
  """Where dataset `name`'s files are prepared: ``<data_home>/<name>``."""
  return os.path.join(data_home(), name)


def how_to_get(name: str) -> str:
  """The sentence that tells a user how to get dataset `name` (for error messages)."""
  if name in FILE_DATASETS:
    return (f"get it with `python -m diffusion.data prepare {name}` (downloads to "
            f"{dataset_dir(name)}; set ${ENV} to put it elsewhere, or pass "
            f"--config.data.data_dir=DIR)")
  if name in TFDS_DATASETS:
    return f"prepare it with `python -m diffusion.data prepare {name}` (TFDS, array_record)"
  return "point --config.data.data_dir at its files"


def _check(path: str, shape: tuple) -> None:
  array = idx.read_idx(path)  # A DataError names the file.
  if array.shape != shape:
    raise RunError(f"{path} holds an array of shape {array.shape}, not {shape}: not the "
                   "expected file")


def prepare_files(name: str, source: str | None = None, out: str | None = None,
                  echo=print) -> str:
  """Puts dataset `name`'s files in `out` (default `dataset_dir`), copied from the
  folder `source` or downloaded from the mirrors; checks each. Returns `out`."""
  if name not in FILE_DATASETS:
    raise ConfigError(f"unknown files dataset {name!r}; valid: {', '.join(FILE_DATASETS)}")
  files, mirrors = FILE_DATASETS[name]
  out = out or dataset_dir(name)
  os.makedirs(out, exist_ok=True)
  for filename, shape in files.items():
    target = os.path.join(out, filename)
    if os.path.exists(target):
      _check(target, shape)
      echo(f"{name}: {target} is there")
      continue
    tmp = os.path.join(out, ".part-" + filename)  # Ends like the file: read the same way.
    if source is not None:
      src = os.path.join(source, filename)
      if not os.path.exists(src):
        raise ConfigError(f"--from {source}: no {filename} there (a {name} folder holds "
                          f"{', '.join(files)})")
      shutil.copyfile(src, tmp)
    else:
      errors = []
      for mirror in mirrors:
        try:
          echo(f"{name}: downloading {mirror}{filename}")
          with urllib.request.urlopen(mirror + filename, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
          break
        except (urllib.error.URLError, OSError) as e:
          errors.append(f"{mirror}{filename}: {getattr(e, 'reason', e)}")
      else:
        raise RunError(f"could not download {filename} ({'; '.join(errors)}); without "
                       f"network, copy the {name} files ({', '.join(files)}) into {out} by "
                       f"other means, or run `python -m diffusion.data prepare {name} "
                       "--from DIR`")
    try:
      _check(tmp, shape)
    except BaseException:
      os.remove(tmp)
      raise
    os.replace(tmp, target)
    echo(f"{name}: {target}")
  return out


def prepare_tfds(name: str, data_dir: str | None = None, echo=print) -> str:
  """Prepares TFDS dataset `name` as array_record (needs network, and TensorFlow for
  some datasets' builders). Returns the dataset's folder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    echo(f"{name}: prepared in {builder.data_path}")
    return str(builder.data_path)
  echo(f"{name}: downloading and preparing in {builder.data_path} (array_record)")
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  (network, TensorFlow, disk)
    raise RunError(f"TFDS could not prepare {name} ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''}); it needs network access "
                   "(and TensorFlow for some datasets). Prepare it elsewhere and copy the "
                   "folder, or convert a tfrecord copy with `tfds convert_format "
                   "--dataset_version_dir=<data_dir>/<name>/<config>/<version> "
                   "--out_file_format=array_record`") from e
  return str(builder.data_path)


def main(argv) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m diffusion.data",
                                   description="Get the datasets the configs read.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="download (or copy) a dataset to where the configs look")
  p.add_argument("name", help=f"one of {', '.join(sorted(set(FILE_DATASETS) | set(TFDS_DATASETS)))}")
  p.add_argument("--from", dest="source", help="copy the files from this folder, no network")
  p.add_argument("--out", help="the folder (default: $DIFFUSION_DATA/<name>)")
  p.add_argument("--tfds", action="store_true", help="prepare the TFDS version")
  w = sub.add_parser("where", help="print the folder of a files dataset")
  w.add_argument("name")
  args = parser.parse_args(argv)
  try:
    if args.command == "where":
      print(dataset_dir(args.name))
    elif args.name in FILE_DATASETS and not args.tfds:
      prepare_files(args.name, args.source, args.out)
    elif args.name in TFDS_DATASETS:
      prepare_tfds(args.name, args.out)
    else:
      raise ConfigError(f"unknown dataset {args.name!r}; valid: "
                        f"{', '.join(sorted(set(FILE_DATASETS) | set(TFDS_DATASETS)))}")
  except (ConfigError, RunError) as e:
    print(f"error: {e}", flush=True, file=sys.stderr)
    return 2 if isinstance(e, ConfigError) else 1
  return 0
