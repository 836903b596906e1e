"""Latent diffusion: training the autoencoder, and a trained one as a diffusion model's maps.

Two halves, one per kind of run:

- ``config.model.name = "autoencoder"`` (`configs/mnist_autoencoder.py`):
  `experiment.build` returns an `AutoencoderExperiment`, which the train loop runs
  like any experiment (same checkpoints, resume, progress bar, metrics.jsonl,
  wandb). Its loss is reconstruction (L1 or L2, per pixel) + ``kl_weight`` x the
  posterior's KL (per pixel: ``KL / (H W C)``, which is the latent-diffusion code's
  ``kl_weight`` up to the common factor H W C) and, from step ``disc_start`` on, a
  patch discriminator's hinge loss. Its "samples" grid shows each preview image
  above its reconstruction. At every checkpoint it writes
  ``workdir/autoencoder/step_XXXXXX.{json,npz}``: the EMA parameters, the latent
  scale factor (1 / std of the posterior means of ``autoencoder.scale_num`` training
  images) and the reconstruction MSE / PSNR on ``autoencoder.eval_num`` images of
  ``autoencoder.eval_split``.
- ``config.latent.autoencoder_workdir = W`` (`configs/mnist_latent_text.py`): a
  diffusion model whose data are the autoencoder's scaled latents. `load_codec`
  reads (and checks) W's newest such files; the model's shape is the latent
  shape; training reads the latents cached once in ``workdir/latents/``
  (`data.latents`); every sampler, guidance and text conditioning runs on latents
  unchanged, and `Experiment.sample_fn` decodes what they return.

PSNR of images in [-1, 1] (peak-to-peak 2): ``10 log10(4 / mse)``, per image, averaged.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import checks
from diffusion.models import autoencoder as ae_lib
from diffusion.train import state as ts

AE_DIR = "autoencoder"  # workdir/autoencoder/step_XXXXXX.{json,npz}
LOSSES = ("l1", "l2")


def is_autoencoder(config) -> bool:
  return config.model.name == "autoencoder"


def architecture(config) -> dict:
  """The `AutoencoderKL` fields of an autoencoder config (model.ch / channel_mult /
  num_res_blocks and the autoencoder section)."""
  m, a = config.model, config.autoencoder
  return dict(ch=int(m.ch), channel_mult=tuple(int(v) for v in m.channel_mult),
              num_res_blocks=int(m.num_res_blocks), latent_channels=int(a.latent_channels),
              attention=bool(a.attention), out_channels=int(config.data.channels))


def check_autoencoder(config) -> None:
  """ConfigError naming the key of an autoencoder setting that cannot work."""
  a, d = config.autoencoder, config.data
  checks.setting(a.loss, LOSSES, "config.autoencoder.loss")
  for key, lo in (("kl_weight", 0.0), ("disc_weight", 0.0)):
    checks.number(a[key], f"config.autoencoder.{key}", lo=lo)
  for key in ("latent_channels", "scale_num", "eval_num", "disc_ch", "disc_layers"):
    checks.number(a[key], f"config.autoencoder.{key}", integer=True, lo=1)
  checks.number(a.disc_start, "config.autoencoder.disc_start", integer=True, lo=0)
  f = ae_lib.downsampling_factor(config.model.channel_mult)
  if d.image_size % f:
    raise checks.ConfigError(
        f"config.data.image_size={d.image_size} is not divisible by the autoencoder's "
        f"downsampling factor f={f} (2 ** (len(config.model.channel_mult) - 1))")
  one_split = d.source == "files" and (d.data_dir.lower().endswith(".npz") or (
      os.path.isdir(d.data_dir) and not any("idx" in n for n in os.listdir(d.data_dir))))
  if one_split and a.eval_split != "train":
    raise checks.ConfigError(
        f"config.autoencoder.eval_split={a.eval_split!r}: config.data.data_dir="
        f"{d.data_dir!r} has one split, its training images; set it to 'train' to measure "
        "the reconstruction PSNR on them knowingly")
  if config.latent.autoencoder_workdir:
    raise checks.ConfigError("config.latent.autoencoder_workdir is set on an autoencoder "
                             "config (model.name='autoencoder'): an autoencoder trains on images")


# --------------------------------------------------------------------------
# Training the autoencoder.
# --------------------------------------------------------------------------


def psnr(x, x_hat):
  """Per-image PSNR (dB) of images in [-1, 1]: ``10 log10(4 / mse)``: [B]."""
  mse = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=-1)
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


@dataclasses.dataclass(frozen=True)
class AutoencoderExperiment(ts.StateFactory):
  """The experiment record of an autoencoder run (module doc), with the fields the
  train loop reads of an `experiment.Experiment`; `model` is the `AutoencoderKL`,
  `discriminator` the `PatchDiscriminator` (None when ``autoencoder.disc_weight = 0``)."""

  config: Any
  model: Any
  tx: Any
  state_key: jax.Array
  sample_key: jax.Array
  discriminator: Any = None
  process: Any = None
  codec: Any = None
  tokenizer: Any = None

  @property
  def adversarial(self) -> bool:
    return self.discriminator is not None

  def net_params(self, params):
    return params["ae"] if self.adversarial else params

  def reconstruct(self, params, x, rng=None):
    return self.model.apply({"params": self.net_params(params)}, x, rng)

  def loss_fn(self, params, batch, rng, step=None):
    """``(loss, metrics)``: reconstruction + kl_weight KL (+ the adversarial terms)."""
    a = self.config.autoencoder
    x = batch["image"]
    x_hat, mean, logvar = self.reconstruct(params, x, rng)
    err = jnp.abs(x - x_hat) if a.loss == "l1" else jnp.square(x - x_hat)
    rec = jnp.mean(err)
    pixels = x[0].size
    kl = jnp.mean(ae_lib.kl_to_standard_normal(mean, logvar)) / pixels
    loss = rec + a.kl_weight * kl
    metrics = {"rec": rec, "kl": kl, "mse": jnp.mean(jnp.square(x - x_hat)),
               "psnr": jnp.mean(psnr(x, x_hat))}
    if self.adversarial:
      # One gradient updates both nets: the generator's term sees the discriminator's
      # params through stop_gradient, the discriminator's term the reconstruction.
      disc = lambda p, img: self.discriminator.apply({"params": p}, img)
      frozen = jax.lax.stop_gradient(params["disc"])
      g_adv = -jnp.mean(disc(frozen, x_hat))
      d_loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - disc(params["disc"], x))) +
                      jnp.mean(jax.nn.relu(1.0 + disc(params["disc"], jax.lax.stop_gradient(x_hat)))))
      on = (jnp.asarray(step) >= a.disc_start).astype(jnp.float32) if step is not None else 1.0
      loss = loss + on * (a.disc_weight * g_adv + d_loss)
      metrics.update(g_adv=g_adv, d_loss=d_loss, disc_on=jnp.asarray(on, jnp.float32))
    return loss, metrics

  def create_state(self, rng) -> ts.TrainState:
    c = self.config.data
    x = jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32)

    def init_fn(r):
      params = self.model.init(jax.random.fold_in(r, 0), x)["params"]
      if not self.adversarial:
        return params
      return {"ae": params,
              "disc": self.discriminator.init(jax.random.fold_in(r, 1), x)["params"]}
    return ts.create(rng, init_fn, self.tx)

  def preview(self, n: int) -> np.ndarray:
    """The first `n` training images (epoch 0's order), the grid's originals."""
    from diffusion.data import iterator  # pylint: disable=g-import-not-at-top
    it = iterator.create(self.config.data, seed=self.config.seed)
    return images_of(it, n)

  def sample_fn(self, section=None, *, num_samples=None, mesh=None, **unused):
    """``fn(params, rng) -> [2 n, H, W, C]``: rows of 8 preview images, each row followed
    by their reconstructions (posterior means), ``n = sample.num_samples // 2``."""
    del section, mesh, unused
    n = max(1, (self.config.sample.num_samples if num_samples is None else num_samples) // 2)
    x = jnp.asarray(self.preview(n))
    cols = self.grid_columns()

    def fn(params, rng):
      del rng
      x_hat = self.reconstruct(params, x)[0]
      rows = []
      for r in range(0, n, cols):
        rows += [x[r:r + cols], jnp.clip(x_hat[r:r + cols], -1.0, 1.0)]
      return jnp.concatenate(rows)
    return jax.jit(fn)

  def grid_columns(self) -> int:
    return min(8, max(1, self.config.sample.num_samples // 2))

  def on_checkpoint(self, step: int, params, workdir, it) -> str:
    """Writes ``autoencoder/step_XXXXXX.{npz,json}`` (module doc) for the EMA `params`
    of checkpoint `step`; `it` is the training iterator. Returns a one-line summary."""
    from diffusion.data import iterator  # pylint: disable=g-import-not-at-top
    from diffusion.run import checkpoint  # pylint: disable=g-import-not-at-top
    from diffusion.run.workdir import Workdir, save_npz, write_json  # pylint: disable=g-import-not-at-top
    a, d = self.config.autoencoder, self.config.data
    net = jax.tree.map(jnp.asarray, self.net_params(params))
    fns = self.__dict__.get("_measure_fns")
    if fns is None:  # Compiled once per run, not at every checkpoint.
      fns = (jax.jit(lambda p, x: self.model.apply({"params": p}, x, method="encode")[0]),
             jax.jit(lambda p, x: self.model.apply({"params": p}, x)[0]))
      object.__setattr__(self, "_measure_fns", fns)
    encode, recon = (functools.partial(f, net) for f in fns)
    means = batched(encode, images_of(it, a.scale_num, fresh=True), d.batch_size)
    std = float(np.std(means))
    section = d.copy_and_resolve_references()
    section.split = a.eval_split
    held = images_of(iterator.create(section, seed=self.config.seed), a.eval_num)
    x_hat = np.clip(batched(recon, held, d.batch_size), -1.0, 1.0)
    mse = np.mean(np.square(held - x_hat).reshape(len(held), -1), axis=-1)
    info = {
        "step": int(step), "architecture": architecture(self.config),
        "image_shape": [d.image_size, d.image_size, d.channels],
        "latent_shape": list(means.shape[1:]), "factor": ae_lib.downsampling_factor(
            self.config.model.channel_mult),
        "scale_factor": 1.0 / std, "latent_std": std, "latent_mean": float(np.mean(means)),
        "scale_num": len(means), "eval_split": a.eval_split, "eval_num": len(held),
        "recon_mse": float(np.mean(mse)),
        "recon_psnr": float(np.mean(10.0 * np.log10(4.0 / np.maximum(mse, 1e-12)))),
        "recon_psnr_se": float(np.std(10.0 * np.log10(4.0 / np.maximum(mse, 1e-12)))
                               / np.sqrt(len(mse))),
    }
    if jax.process_index() == 0:
      folder = Workdir(workdir).path / AE_DIR
      folder.mkdir(parents=True, exist_ok=True)
      save_npz(folder / f"step_{int(step):06d}.npz",
               **{k: np.asarray(v) for k, v in checkpoint.named_leaves(net).items()})
      write_json(folder / f"step_{int(step):06d}.json", info, indent=2, sort_keys=True)
    return (f"autoencoder step {step}: {a.eval_split} reconstruction PSNR "
            f"{info['recon_psnr']:.2f} dB (MSE {info['recon_mse']:.4f}, n={len(held)}); "
            f"latents {tuple(info['latent_shape'])}, scale factor {info['scale_factor']:.4f}")


def images_of(it, n: int, fresh: bool = False) -> np.ndarray:
  """The first `n` images (float [-1, 1]) of `it`'s epoch-0 order, read by one process."""
  from diffusion.data import iterator  # pylint: disable=g-import-not-at-top
  if fresh or it.process_count > 1:
    it = iterator.DataIterator(it.images, it.labels, it.levels, batch_size=it.batch_size,
                               seed=it.seed)
  out = [b["image"] for b in it.every_example(limit=n)]
  return np.concatenate(out)[:n]


def batched(fn, x: np.ndarray, batch: int) -> np.ndarray:
  """``fn`` over `x` in chunks of `batch` (the last one padded, so one program)."""
  out = []
  for i in range(0, len(x), batch):
    chunk = x[i:i + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(np.asarray(fn(jnp.asarray(chunk)))[:batch - pad])
  return np.concatenate(out)


def build_autoencoder(config) -> AutoencoderExperiment:
  """The `AutoencoderExperiment` of an autoencoder config (`experiment.build` validates
  the config first)."""
  from diffusion import models  # pylint: disable=g-import-not-at-top
  dtype = models.compute_dtype(config.train.precision)
  a = config.autoencoder
  disc = (ae_lib.PatchDiscriminator(ch=a.disc_ch, num_layers=a.disc_layers, dtype=dtype)
          if a.disc_weight > 0 else None)
  state_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed))
  return AutoencoderExperiment(
      config=config, model=ae_lib.AutoencoderKL(**architecture(config), dtype=dtype),
      tx=ts.make_optimizer(config), state_key=state_key, sample_key=sample_key,
      discriminator=disc)


# --------------------------------------------------------------------------
# A trained autoencoder as the maps of a latent diffusion model.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Codec:
  """The latent maps of a diffusion model: ``encode(x) = scale * E(x)`` and
  ``decode(z) = D(z / scale)`` (E: the posterior mean). `source` identifies the
  autoencoder (its workdir and step), for the latent cache."""

  encode_fn: Callable
  decode_fn: Callable
  scale: float
  latent_shape: tuple[int, int, int]
  image_shape: tuple[int, int, int]
  source: dict

  def encode(self, x):
    return self.encode_fn(x) * self.scale

  def decode(self, z):
    return self.decode_fn(z / self.scale)


def linear_codec(image_shape, factor: int = 1, seed: int | None = None,
                 scale: float = 1.0) -> Codec:
  """The `Codec` of a fixed `models.autoencoder.LinearAutoencoder` (the tests' proof)."""
  h, w, c = image_shape
  lin = ae_lib.LinearAutoencoder(c, factor, seed)
  return Codec(lin.encode, lin.decode, float(scale),
               (h // factor, w // factor, c * factor * factor), tuple(image_shape),
               {"linear": True, "factor": factor, "seed": seed})


def nested_params(flat: dict) -> dict:
  """``{"a/b/kernel": array}`` -> nested dicts (the npz's slash-joined names)."""
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _steps(folder) -> list[int]:
  if not os.path.isdir(folder):
    return []
  found = [re.fullmatch(r"step_(\d+)\.json", n) for n in os.listdir(folder)]
  return sorted(int(m.group(1)) for m in found if m and os.path.exists(
      os.path.join(folder, f"step_{int(m.group(1)):06d}.npz")))


def load_codec(config) -> Codec | None:
  """The `Codec` of ``config.latent.autoencoder_workdir`` (None if unset).

  ConfigError naming the key when the workdir is missing, is not an autoencoder's,
  has no trained step (``latent.checkpoint_step`` or any), or was trained on images
  of another size or channel count than ``config.data``'s."""
  from diffusion.run.workdir import load_npz, read_json  # pylint: disable=g-import-not-at-top
  lat = config.latent
  w = lat.autoencoder_workdir
  if not w:
    return None
  key = "config.latent.autoencoder_workdir"
  if not os.path.isdir(w):
    raise checks.ConfigError(f"{key}={w!r} does not exist: train the autoencoder there first "
                             "(python -m diffusion.main --config configs/mnist_autoencoder.py "
                             f"--workdir {w})")
  cfg_file = os.path.join(w, "config.json")
  if not os.path.exists(cfg_file):
    raise checks.ConfigError(f"{key}={w!r} has no config.json: it is not a trained workdir "
                             "(train the autoencoder there first)")
  saved = read_json(cfg_file)
  if saved.get("model", {}).get("name") != "autoencoder":
    raise checks.ConfigError(f"{key}={w!r} is the workdir of a {saved.get('model', {}).get('name')!r} "
                             "model, not of an autoencoder (model.name='autoencoder')")
  folder = os.path.join(w, AE_DIR)
  steps = _steps(folder)
  if not steps:
    raise checks.ConfigError(f"{key}={w!r} has no trained autoencoder yet (no "
                             f"{AE_DIR}/step_*.json / .npz, written at each checkpoint): "
                             "let its training reach a checkpoint")
  step = steps[-1] if lat.checkpoint_step is None else lat.checkpoint_step
  if step not in steps:
    raise checks.ConfigError(f"config.latent.checkpoint_step={step}: {w}/{AE_DIR} has steps "
                             f"{steps}")
  info = read_json(os.path.join(folder, f"step_{step:06d}.json"))
  d = config.data
  want = [d.image_size, d.image_size, d.channels]
  if list(info["image_shape"]) != want:
    h, ww, c = info["image_shape"]
    raise checks.ConfigError(
        f"{key}={w!r}: the autoencoder was trained on {h}x{ww}x{c} images but config.data "
        f"gives {d.image_size}x{d.image_size}x{d.channels} (data.image_size, data.channels)")
  params = nested_params(load_npz(os.path.join(folder, f"step_{step:06d}.npz")))
  params = jax.tree.map(jnp.asarray, params)
  model = ae_lib.AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in info["architecture"].items()})
  encode = lambda x: model.apply({"params": params}, x, method="encode")[0]
  decode = lambda z: model.apply({"params": params}, z, method="decode")
  scale = float(lat.scale_factor) if lat.scale_factor > 0 else float(info["scale_factor"])
  return Codec(encode, decode, scale, tuple(info["latent_shape"]), tuple(want),
               {"workdir": os.path.abspath(w), "step": int(step), "scale": scale})
