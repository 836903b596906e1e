"""Inception-v3 as used for FID ("FID Inception", the 2015-12-05 TF graph) in Flax linen.

The network is the one behind the standard FID numbers: TTUR's TF graph
``pt_inception-2015-12-05`` as ported to PyTorch by pytorch-fid
(``FIDInceptionV3``). It is torchvision's Inception-v3 without the auxiliary
head, with 1008 output classes and these pooling differences in the mixed
blocks (they matter: the features differ without them):

* ``Mixed_5b..5d`` (A) and ``Mixed_6b..6e`` (C): the pool branch averages a 3x3
  window over valid pixels only (``count_include_pad=False``);
* ``Mixed_7b`` (E_1): the same average pooling; ``Mixed_7c`` (E_2): a 3x3
  *max* pool, stride 1, in the pool branch.

Every convolution has no bias and is followed by BatchNorm (eps 1e-3, running
statistics: inference only) and ReLU. Images ``[B, H, W, C]`` in [-1, 1]
(``C`` 3, or 1 which is tiled to RGB) are resized bilinearly to 299x299
(half-pixel centres, no antialiasing: PyTorch's
``interpolate(..., align_corners=False)``, as in pytorch-fid). ``__call__``
returns ``{"pool3": [B, 2048], "logits": [B, 1008]}``; ``pool3`` is the FID
feature, ``logits`` feed the Inception Score.

Weights file format (``save_params`` / ``load_params``)
-------------------------------------------------------
One uncompressed ``.npz`` whose keys are the paths of the Flax variables
joined by ``"/"``, collection first, e.g. ``params/Conv2d_1a_3x3/conv/kernel``
(``[3, 3, 3, 32]``, HWIO), ``params/Mixed_5b/branch1x1/bn/scale``,
``batch_stats/Mixed_5b/branch1x1/bn/mean`` and ``.../bn/var``,
``params/fc/kernel`` (``[2048, 1008]``) and ``params/fc/bias``. The values are
float32 arrays; every key of the model must be present with its exact shape,
and no other key may be.

Getting the standard FID weights (no download happens in this module)
---------------------------------------------------------------------
1. Fetch pytorch-fid's release asset ``pt_inception-2015-12-05-6726825d.pth``
   (GitHub ``mseitzer/pytorch-fid``, release ``fid_weights``). It is a plain
   PyTorch ``state_dict`` of ``FIDInceptionV3`` converted from the TF graph
   ``classify_image_graph_def.pb`` of ``inception-2015-12-05.tgz``; users who
   start from that TF graph should first turn it into this state_dict (the
   route pytorch-fid took); that step is not implemented here.
2. On a machine with ``torch`` installed, convert it::

       python -m diffusion.models.inception \\
           --convert pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

   The name mapping (``convert_torch_state_dict``) is a pure function on numpy
   arrays: ``<block>.conv.weight`` ``[O, I, kh, kw]`` becomes
   ``params/<block>/conv/kernel`` ``[kh, kw, I, O]``; ``<block>.bn.weight``,
   ``.bias``, ``.running_mean``, ``.running_var`` become ``bn/scale``,
   ``bn/bias`` (params) and ``bn/mean``, ``bn/var`` (batch_stats);
   ``fc.weight`` ``[1008, 2048]`` becomes ``params/fc/kernel`` transposed;
   ``num_batches_tracked`` is dropped. Module names follow torchvision's, so
   ``<block>`` is the same dotted path with ``/`` for ``.``.
3. ``variables = load_params("inception_fid.npz")`` then
   ``feature_fn(variables)(images)`` gives pool3 features for
   ``diffusion.evaluate``.
"""
from __future__ import annotations

import argparse
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299


class BasicConv(nn.Module):
  """Bias-free convolution, BatchNorm (running statistics, eps 1e-3), ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)  # symmetric (rows, columns), as PyTorch's padding=

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, (self.strides, self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging over the pixels inside the image only."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b..5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1 -> 224 + pool_features channels."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a, grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool/2 -> 768 channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches of width ``channels_7x7`` -> 768 channels."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a, grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2 -> 1280 channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: expanded 1x3 + 3x1 branches -> 2048 channels.

  ``pool="avg"`` is FIDInceptionE_1 (Mixed_7b), ``pool="max"`` FIDInceptionE_2 (Mixed_7c).
  """

  pool: str

  @nn.compact
  def __call__(self, x):
    if self.pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, **row, name="branch3x3_2a")(b3),
                          BasicConv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
                          BasicConv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    else:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3: images ``[B, H, W, 3 or 1]`` in [-1, 1] -> pool3 and logits."""

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"expected images [B, H, W, 1 or 3], got shape {x.shape}")
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.tile(x, (1, 1, 1, 3))
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
      x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
                           antialias=False)
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    return {"pool3": pool3, "logits": nn.Dense(self.num_classes, name="fc")(pool3)}


def variable_shapes(model: InceptionV3 | None = None) -> dict[str, tuple[int, ...]]:
  """Flat ``{"collection/module/.../name": shape}`` of the model's variables (no compute)."""
  model = model or InceptionV3()
  tree = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _check_and_unflatten(flat: Mapping[str, np.ndarray], source: str) -> dict:
  """Checks ``flat`` holds exactly the model's keys and shapes; returns nested float32 variables."""
  expected = variable_shapes()
  for key, shape in expected.items():
    if key not in flat:
      raise KeyError(f"{source}: missing Inception variable {key!r} (shape {shape})")
    if tuple(flat[key].shape) != shape:
      raise ValueError(f"{source}: variable {key!r} has shape {tuple(flat[key].shape)}, "
                       f"expected {shape}")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise ValueError(f"{source}: {len(extra)} unexpected variables, first {extra[0]!r}")
  return traverse_util.unflatten_dict(
      {k: np.asarray(flat[k], np.float32) for k in expected}, sep="/")


def save_params(path: str, variables: Mapping) -> None:
  """Writes ``variables`` (``{"params": ..., "batch_stats": ...}``) in the module's npz format."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
  with open(path, "wb") as f:  # a file object keeps the exact name (np.savez would add .npz)
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_params(path: str) -> dict:
  """Reads and checks an npz written by ``save_params`` (or the converter); returns variables."""
  with np.load(path) as data:
    flat = {k: data[k] for k in data.files}
  return _check_and_unflatten(flat, path)


def convert_torch_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid ``FIDInceptionV3`` state_dict (numpy values) -> checked Flax variables."""
  bn_names = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
  flat = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    *owner, leaf = key.split(".")
    prefix = "/".join(owner)
    if leaf == "num_batches_tracked":
      continue
    if owner[-1:] == ["conv"] and leaf == "weight":
      flat[f"params/{prefix}/kernel"] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif owner[-1:] == ["bn"] and leaf in bn_names:
      collection, name = bn_names[leaf]
      flat[f"{collection}/{prefix}/{name}"] = value
    elif owner == ["fc"] and leaf == "weight":
      flat["params/fc/kernel"] = value.T
    elif owner == ["fc"] and leaf == "bias":
      flat["params/fc/bias"] = value
    else:
      raise ValueError(f"state_dict key {key!r} is not part of pytorch-fid's FIDInceptionV3")
  return _check_and_unflatten(flat, "converted state_dict")


def _load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("converting a .pth file needs PyTorch: pip install torch "
                      "(only for this one-off conversion)") from e
  state = torch.load(path, map_location="cpu")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def feature_fn(variables: Mapping, batch_size: int = 200) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Returns ``fn(images [N, H, W, C] in [-1, 1]) -> (pool3 [N, 2048] float64, logits [N, 1008])``.

  Images go through one jitted network in batches of ``min(batch_size, N)``;
  the last batch is zero-padded so only one shape is ever compiled.
  """
  model = InceptionV3()
  apply = jax.jit(lambda v, x: model.apply(v, x))

  def fn(images) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    if n == 0:
      return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_CLASSES))
    bs = min(batch_size, n)
    pools, logits = [], []
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      pad = bs - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
      out = jax.device_get(apply(variables, chunk))
      pools.append(out["pool3"][:bs - pad])
      logits.append(out["logits"][:bs - pad])
    return (np.concatenate(pools).astype(np.float64),
            np.concatenate(logits).astype(np.float64))

  return fn


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Convert pytorch-fid's FID Inception weights "
                                   "(pt_inception-2015-12-05-6726825d.pth) to this module's npz.")
  parser.add_argument("--convert", required=True, help="path of the PyTorch .pth state_dict")
  parser.add_argument("--out", required=True, help="path of the .npz to write")
  args = parser.parse_args(argv)
  variables = convert_torch_state_dict(_load_torch_state_dict(args.convert))
  save_params(args.out, variables)
  load_params(args.out)  # re-read: the written file passes the same checks users rely on
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
