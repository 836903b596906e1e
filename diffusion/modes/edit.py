"""`--mode edit`: inpainting, image-to-image, inversion editing, denoising, anomaly scores.

    python -m diffusion.main --mode edit --config configs/x.py --workdir W \\
        --config.edit.task=inpaint --config.edit.input=digits.npz --config.edit.mask=half

Each task runs the algorithms of `core.edit` on the EMA parameters of a checkpoint of
`W` (``config.sample.checkpoint_step``; None: the newest) with the sampler of
``config.sample`` (any sampler that steps through time; its guidance too), on the
images of ``config.edit.input`` (`data.edit_inputs.read_images`: the model's exact
size and channels). A latent model edits the latents of its autoencoder: images are
encoded, edited and decoded; an inpainting mask keeps a latent cell only where every
pixel over it is kept (the known pixels are pasted back after decoding).

- ``inpaint``: the replacement method (``edit.inpaint_method="replace"``, any sampler)
  or RePaint (``"repaint"``, discrete schedules; ``edit.jump_length``,
  ``edit.jump_n_sample``), with the mask of ``edit.mask``.
- ``img2img``: SDEdit at ``edit.strength`` (`core.edit.start_at_level`), conditioned on
  ``edit.labels`` / ``edit.prompt`` if given.
- ``invert``: DDIM inversion (eta 0, ``edit.invert_steps``) under the source condition,
  then DDIM regeneration under the target one (``edit.labels`` / ``edit.prompt``, with
  ``sample.guidance``); the figure shows input | inverted noise | reconstruction | edit.
- ``denoise``: Tweedie's one-step posterior mean, or the sampler run from the input's
  noise level (``edit.denoise_method="reverse"``), at ``edit.sigma`` (0: estimated per
  image, `core.edit.estimate_sigma`); ``edit.add_noise`` adds that noise to clean inputs
  first and reports the PSNR before and after.
- ``anomaly``: per-image scores (``edit.scores``), a threshold at the ``edit.quantile``
  of the scores of ``edit.normal`` (normal validation images), and AUROC / AUPRC when the
  input npz has ``anomaly`` (1 = anomalous).

Writes under ``W/edit/<task>/`` (``<task>-2``, ... when that exists: nothing is
overwritten): ``results.npz``, ``summary.json``, ``figure.png`` (input | mask or noise |
result, ``edit.grid_size`` images); for anomaly also ``scores.csv``, ``histogram.png``
and ``roc.png``. Every bad key, value or input fails with one line before the network
is loaded.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import experiment, latent
from diffusion.core import checks, edit, samplers
from diffusion.data import edit_inputs
from diffusion.dist import placement
from diffusion.eval import anomaly
from diffusion.eval.bpd import denoiser_bpd
from diffusion.modes.sample import refuse_autoencoder
from diffusion.run import checkpoint, console, resume
from diffusion.run.workdir import Workdir, save_npz
from diffusion.viz import images as visualize

TASKS = ("inpaint", "img2img", "invert", "denoise", "anomaly")
SCORES = ("reconstruction", "score_norm", "bpd")
INPAINT_METHODS = ("replace", "repaint")
DENOISE_METHODS = ("tweedie", "reverse")


def check_edit(config) -> None:
  """ConfigError (one line naming the key and what is allowed) for a bad ``config.edit``."""
  e, d = config.edit, config.diffusion

  def fail(msg):
    raise checks.ConfigError(msg)
  if e.task not in TASKS:
    fail(f"config.edit.task={e.task!r} is not one of {', '.join(TASKS)}")
  if e.name and (os.sep in e.name or e.name.startswith(".")):
    fail(f"config.edit.name={e.name!r} must be a plain folder name (no {os.sep!r}, not hidden)")
  if not e.input:
    fail("config.edit.input is empty: give an image file, a folder of images or an .npz")
  for key in ("num", "batch_size", "grid_size", "jump_length", "jump_n_sample", "invert_steps"):
    v = e[key]
    low = 0 if key in ("num", "invert_steps") else 1
    if v < low:
      fail(f"config.edit.{key}={v} must be an int >= {low}")
  if e.task == "inpaint":
    if e.inpaint_method not in INPAINT_METHODS:
      fail(f"config.edit.inpaint_method={e.inpaint_method!r} is not one of "
           f"{', '.join(INPAINT_METHODS)}")
    if e.inpaint_method == "repaint" and d.type != "discrete":
      fail("config.edit.inpaint_method='repaint' needs a discrete schedule (diffusion.type="
           f"'discrete'); this model is {d.type!r}: use 'replace'")
  if e.task == "img2img":
    try:
      edit.check_strength(e.strength)
    except ValueError as err:
      fail(f"config.edit.strength: {err}")
  if e.task == "invert" and d.type != "discrete":
    fail(f"config.edit.task='invert' is DDIM inversion, which needs a discrete schedule; this "
         f"model is diffusion.type={d.type!r}")
  if e.task == "denoise":
    if e.denoise_method not in DENOISE_METHODS:
      fail(f"config.edit.denoise_method={e.denoise_method!r} is not one of "
           f"{', '.join(DENOISE_METHODS)}")
    if not e.sigma >= 0:
      fail(f"config.edit.sigma={e.sigma} must be >= 0 (0: estimated from each image)")
    if e.add_noise and not e.sigma > 0:
      fail("config.edit.add_noise=True needs the noise level config.edit.sigma > 0")
    if config.latent.autoencoder_workdir:
      fail("config.edit.task='denoise' removes pixel noise, which a latent model never saw "
           "(its noise is in latent space); denoise with a pixel-space model")
  if e.task == "anomaly":
    # "a,b" on the command line arrives as one string: split it.
    e.scores = tuple(p.strip() for s in e.scores for p in str(s).split(",") if p.strip())
    bad = [s for s in e.scores if s not in SCORES]
    if bad or not e.scores:
      fail(f"config.edit.scores={tuple(e.scores)!r}: each must be one of {', '.join(SCORES)}")
    if not e.recon_sigmas or any(not s > 0 for s in e.recon_sigmas):
      fail(f"config.edit.recon_sigmas={tuple(e.recon_sigmas)!r} must be noise levels > 0")
    if not e.score_sigma > 0:
      fail(f"config.edit.score_sigma={e.score_sigma} must be > 0")
    if not 0.0 < e.quantile < 1.0:
      fail(f"config.edit.quantile={e.quantile} must lie in (0, 1)")
    if e.normal and not os.path.exists(e.normal):
      fail(f"config.edit.normal={e.normal!r} does not exist")
  if d.type == "vdm" and d.gamma == "learned" and e.task in ("img2img", "denoise"):
    fail(f"config.edit.task={e.task!r} starts part-way on a fixed schedule; this VDM learns "
         "its schedule (diffusion.gamma='learned')")


def _read(path, shape, num, noisy=False):
  """``(images, extras)``: the images and an npz's ``label`` / ``anomaly`` arrays."""
  try:
    images = edit_inputs.read_images(path, shape, noisy)
  except ValueError as err:
    raise checks.ConfigError(str(err)) from None
  extras = {}
  if path.lower().endswith(".npz"):
    with np.load(path) as z:
      for key in ("label", "anomaly"):
        if key in z.files:
          a = np.asarray(z[key]).reshape(-1)
          if len(a) != len(images):
            raise checks.ConfigError(f"config.edit.input={path!r}: '{key}' has {len(a)} entries "
                                     f"for {len(images)} images")
          extras[key] = a.astype(np.int64)
  if num:
    images, extras = images[:num], {k: v[:num] for k, v in extras.items()}
  return images, extras


def _conditions(exp, text: str, prompt: str, n: int, key: str, fallback=None):
  """The condition inputs of `n` images: labels "3,7" / prompts "a|b" cycled, else
  `fallback` (labels ``[n]``), else the null condition; None for unconditional models."""
  config = exp.config
  if experiment.text_conditional(config):
    prompts = [p.strip() for p in prompt.split("|")] if prompt.strip() else []
    if not prompts:
      return exp.null_inputs(n)
    return exp.tokenize([prompts[i % len(prompts)] for i in range(n)])
  if not experiment.class_conditional(config):
    if text.strip():
      raise checks.ConfigError(f"{key}={text!r}: this model is unconditional "
                               "(model.num_classes is unset)")
    return None
  labels = experiment.parse_labels(text, config.model.num_classes, key)
  if labels:
    return jnp.asarray([labels[i % len(labels)] for i in range(n)], jnp.int32)
  if fallback is not None:
    return jnp.asarray(fallback, jnp.int32)
  if config.cond.p_uncond <= 0:
    raise checks.ConfigError(f"{key} is empty and this class model has no trained null label "
                             "(cond.p_uncond=0): give the labels")
  return exp.null_inputs(n)


def _out_dir(workdir, task: str) -> str:
  root = os.path.join(os.fspath(workdir), "edit")
  n, name = 1, task
  while os.path.exists(os.path.join(root, name)):
    n += 1
    name = f"{task}-{n}"
  path = os.path.join(root, name)
  os.makedirs(path)
  return path


def _psnr(a, b) -> np.ndarray:
  return np.asarray(latent.psnr(jnp.asarray(a), jnp.asarray(b)), np.float64)


class _Editor:
  """The model, sampler and condition helpers shared by the tasks."""

  def __init__(self, exp, params, record, options, on):
    self.exp, self.params, self.record, self.options, self.on = exp, params, record, options, on
    self.codec = exp.codec
    self.learned = experiment.learned_schedule(exp.config)
    self.domain = experiment.sampler_domain(record, exp.process)

  def den(self, params, inputs, guided=True):
    exp = self.exp
    den = exp.denoiser(params, exp.condition(params, inputs))
    if guided and inputs is not None:
      n = jax.tree.leaves(inputs)[0].shape[0]
      den = exp.guide(den, params, inputs, None, n)
    return den

  def process(self, den):
    return den.process if self.learned else self.on

  def to_model(self, x):
    return x if self.codec is None else self.codec.encode(x)

  def to_image(self, z):
    return z if self.codec is None else self.codec.decode(z)


def _run_batched(fn, arrays, size: int, desc: str, key):
  """``fn(params-free arrays..., key)`` over batches of ``size`` (the last one padded and
  cut: one compile), with a progress bar; returns the outputs concatenated."""
  n = len(arrays[0])
  outs = []
  spans = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
  for i, (lo, hi) in enumerate(console.progress(spans, desc, unit="batch")):
    pad = size - (hi - lo)
    chunk = [np.concatenate([a[lo:hi], np.repeat(a[hi - 1:hi], pad, 0)]) if pad else a[lo:hi]
             for a in arrays]
    out = fn(*chunk, jax.random.fold_in(key, i))
    outs.append(jax.tree.map(lambda v: np.asarray(v)[:hi - lo], out))
  return jax.tree.map(lambda *v: np.concatenate(v), *outs)


def edit_mode(config, workdir: str) -> str:
  """Runs ``config.edit.task`` (module docstring); returns the output folder."""
  e = config.edit
  refuse_autoencoder(config, "edit")
  with checks.config_errors():
    check_edit(config)
    exp = experiment.build(config)
    record, options, on = exp.sampler()
    resume.check_config(config, workdir, write=False, mode="edit")
    exp = experiment.with_trained_text(exp, workdir)
    shape = tuple(exp.codec.image_shape) if exp.codec is not None else exp.data_shape
    images, extras = _read(e.input, shape, e.num, noisy=e.task == "denoise" and not e.add_noise)
    n = len(images)
    masks = None
    if e.task == "inpaint":
      try:
        if e.mask == "strokes":
          masks = np.stack([edit_inputs.mask("strokes", shape[:2], seed=config.seed + i)
                            for i in range(n)])
        else:
          masks = np.broadcast_to(edit_inputs.mask(e.mask, shape[:2]), (n,) + shape[:2])
      except ValueError as err:
        raise checks.ConfigError(str(err)) from None
      masks = np.broadcast_to(masks[..., None], images.shape).astype(np.float32)
    normal = None
    if e.task == "anomaly" and e.normal:
      normal, _ = _read(e.normal, shape, 0)
  mesh = placement.make_mesh()
  with checkpoint.Checkpointer(Workdir(workdir).checkpoints_dir, None) as ckpt:
    params, step = experiment.restore_ema_params(exp, ckpt, config.sample.checkpoint_step, mesh,
                                                 warn=console.echo)
  ed = _Editor(exp, params, record, options, on)
  key = jax.random.fold_in(exp.sample_key, 0x65646974)  # "edit"
  out = _out_dir(workdir, e.name or e.task)
  t0 = time.time()
  size = min(e.batch_size, n)
  summary = {"task": e.task, "input": e.input, "num_images": n, "checkpoint_step": int(step),
             "sampler": record.name, "options": dataclasses.asdict(options)}
  task = {"inpaint": _inpaint, "img2img": _img2img, "invert": _invert, "denoise": _denoise,
          "anomaly": _anomaly}[e.task]
  try:
    with checks.config_errors():
      rows, labels, arrays, info = task(ed, config, images, extras, masks, normal, size, key,
                                        out)
  except BaseException:
    if not os.listdir(out):
      os.rmdir(out)  # Nothing written: no empty result folder left behind.
    raise
  summary.update(info)
  g = min(e.grid_size, n)
  grid = visualize.image_grid(np.concatenate([r[:g] for r in rows]), g)
  visualize.save_labelled(os.path.join(out, "figure.png"), grid, row_labels=labels,
                          title=f"{e.task}, {summary['sampler']}, EMA params of step {step}")
  save_npz(os.path.join(out, "results.npz"), **arrays)
  summary["seconds"] = round(time.time() - t0, 1)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, default=float)
  extra = "".join(f", {k}={v:.4g}" for k, v in info.items() if isinstance(v, float))
  console.echo(f"edit {e.task}: {n} images -> {out} (figure.png, results.npz, summary.json"
               f"{', scores.csv, histogram.png, roc.png' if e.task == 'anomaly' else ''}; "
               f"{summary['sampler']}, EMA params of step {step}, {summary['seconds']}s{extra})")
  return out


# ------------------------------------------------------------------------ tasks


def _inpaint(ed, config, images, extras, masks, normal, size, key, out):
  e = config.edit
  # Conditional models: the labels / prompts asked for, else the null condition.
  inputs_all = _conditions(ed.exp, e.labels, e.prompt, size, "config.edit.labels")
  lat_shape = ed.exp.data_shape
  repaint = e.inpaint_method == "repaint"

  @jax.jit
  def fn(x, m, k):
    k1, k2 = jax.random.split(k)
    xk = ed.to_model(x)
    mk = m if ed.codec is None else _latent_mask(m, lat_shape)
    den = ed.den(ed.params, inputs_all)
    if repaint:
      z = edit.repaint(den.eps_fn(), ed.exp.process, k2, xk, mk, jump_length=e.jump_length,
                       jump_n_sample=e.jump_n_sample,
                       clip_denoised=1.0 if ed.codec is None else None)
    else:
      den = edit.Replacement(den, xk, mk, k1)
      z = edit.paste(ed.record.run(den, ed.process(den), k2, xk.shape, ed.options), xk, mk)
    return edit.paste(jnp.clip(ed.to_image(z), -1, 1), x, m)

  result = _run_batched(fn, [images, masks], size, "inpaint", key)
  shown = np.where(masks > 0, images, 0.0)  # The known pixels; black where generated.
  info = {"method": e.inpaint_method, "mask": e.mask, "known_fraction": float(masks.mean())}
  if repaint:  # RePaint runs its own ancestral steps over all T, not config.sample's sampler.
    info.update(sampler="repaint", options={"jump_length": e.jump_length,
                                            "jump_n_sample": e.jump_n_sample})
  return ([images, shown, result], ["input", f"known ({e.mask})", e.inpaint_method],
          {"images": images, "masks": masks, "results": result}, info)


def _latent_mask(m, latent_shape):
  """A pixel mask ``[B, H, W, C]`` as a latent one: a cell is kept (1) only where every
  pixel of its f x f block, in every channel, is kept."""
  b, h, w, _ = m.shape
  lh, lw, lc = latent_shape
  f = h // lh
  cell = m.min(axis=-1).reshape(b, lh, f, lw, f).min(axis=(2, 4))
  return jnp.broadcast_to(cell[..., None], (b, lh, lw, lc))


def _img2img(ed, config, images, extras, masks, normal, size, key, out):
  e = config.edit
  s = edit.check_strength(e.strength)
  inputs = _conditions(ed.exp, e.labels, e.prompt, size, "config.edit.labels")
  level = edit.strength_level(ed.exp.process, s)
  if s < 1.0:
    proc, o, kw, c = edit.start_at_level(ed.on, ed.domain, level, ed.options)

  @jax.jit
  def fn(x, k):
    k1, k2 = jax.random.split(k)
    xk = ed.to_model(x)
    den = ed.den(ed.params, inputs)
    if s == 1.0:
      z = ed.record.run(den, ed.process(den), k2, xk.shape, ed.options)
    else:
      y = xk + level * jax.random.normal(k1, xk.shape)
      z = ed.record.run(den, proc, k2, xk.shape, o, x_init=c * y, **kw)
    return jnp.clip(ed.to_image(z), -1, 1)

  result = _run_batched(fn, [images], size, f"img2img s={s:g}", key)
  # The noised input as a state of the forward process, (x + sigma z) / sqrt(1 + sigma^2)
  # (an illustration with its own noise draw; shown for pixel models).
  z = np.asarray(jax.random.normal(jax.random.fold_in(key, 7), images.shape))
  start = np.clip((images + level * z) / np.sqrt(1.0 + level**2), -1, 1)
  target = e.labels or e.prompt or "unconditional"
  return ([images, start if ed.codec is None else images, result],
          ["input", f"noised (s = {s:g})", f"SDEdit -> {target}"],
          {"images": images, "results": result},
          {"strength": s, "start_sigma": level, "target": target})


def _invert(ed, config, images, extras, masks, normal, size, key, out):
  e = config.edit
  steps = e.invert_steps or getattr(ed.options, "num_steps", 50)
  steps = min(steps, ed.exp.process.num_steps)
  target = _conditions(ed.exp, e.labels, e.prompt, size, "config.edit.labels")
  n = len(images)
  # The source condition: edit.source_labels, else the npz's labels, else the null one.
  src_labels = extras.get("label")
  by_row = src_labels is not None and not e.source_labels
  sched = ed.exp.process

  @jax.jit
  def fn(x, lab, k):
    del k
    xk = ed.to_model(x)
    source = _conditions(ed.exp, e.source_labels, e.source_prompt, size,
                         "config.edit.source_labels", lab if by_row else None)
    den_src = ed.den(ed.params, source, guided=False)
    x_t = samplers.ddim_invert(den_src.eps_fn(), sched, xk, num_steps=steps)
    regenerate = lambda den: samplers.ddim(den.eps_fn(), sched, jax.random.PRNGKey(0), xk.shape,
                                           num_steps=steps, eta=0.0, x_init=x_t)
    return {"noise": x_t,
            "reconstruction": jnp.clip(ed.to_image(regenerate(den_src)), -1, 1),
            "results": jnp.clip(ed.to_image(regenerate(ed.den(ed.params, target))), -1, 1)}

  lab = src_labels if by_row else np.zeros(n, np.int64)
  res = _run_batched(fn, [images, lab], size, "invert", key)
  noise = res["noise"]
  shown_noise = (np.clip(noise / 3.0, -1, 1) if ed.codec is None else images)
  rec_psnr = float(np.mean(_psnr(res["reconstruction"], images)))
  tgt = e.labels or e.prompt or "unconditional"
  return ([images, shown_noise, res["reconstruction"], res["results"]],
          ["input", "inverted noise / 3", "reconstruction", f"regenerated -> {tgt}"],
          {"images": images, **res}, {"invert_steps": steps, "target": tgt,
                                      "reconstruction_psnr_db": rec_psnr})


def _denoise(ed, config, images, extras, masks, normal, size, key, out):
  e = config.edit
  if e.add_noise:
    clean = images
    noisy = (images + e.sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, 1),
                                                             images.shape))).astype(np.float32)
  else:
    clean, noisy = None, images
  sig = (np.full(len(noisy), e.sigma, np.float32) if e.sigma > 0
         else edit.estimate_sigma(noisy).astype(np.float32))
  if not np.all(sig > 0):
    raise ValueError("config.edit.sigma=0: the estimated noise level of some input is 0 (a "
                     "noise-free image); give config.edit.sigma")
  inputs = _conditions(ed.exp, e.labels, e.prompt, size, "config.edit.labels")
  if e.denoise_method == "reverse":
    # One start level for all: the median noise level (exact when edit.sigma is given).
    level = float(np.median(sig))
    proc, o, kw, c = edit.start_at_level(ed.on, ed.domain, level, ed.options)

    @jax.jit
    def fn(y, k):
      z = ed.record.run(ed.den(ed.params, inputs), proc, k, y.shape, o, x_init=c * y, **kw)
      return jnp.clip(z, -1, 1)
    result = _run_batched(fn, [noisy], size, "denoise (reverse)", key)
  else:
    @jax.jit
    def fn(y, s, k):
      del k
      return jnp.clip(edit.tweedie(ed.den(ed.params, inputs), y, s), -1, 1)
    result = _run_batched(fn, [noisy, sig], size, "denoise (tweedie)", key)
  info = {"method": e.denoise_method, "sigma_mean": float(np.mean(sig)),
          "sigma_estimated": e.sigma == 0}
  arrays = {"noisy": noisy, "results": result, "sigma": sig}
  if clean is not None:
    info["psnr_noisy_db"] = float(np.mean(_psnr(noisy, clean)))
    info["psnr_denoised_db"] = float(np.mean(_psnr(result, clean)))
    arrays["images"] = clean
    rows = [clean, np.clip(noisy, -1, 1), result]
    names = ["clean", f"noisy (sigma {e.sigma:g})", e.denoise_method]
  else:
    rows = [np.clip(noisy, -1, 1), result]
    names = [f"input (sigma ~ {np.mean(sig):.3g})", e.denoise_method]
  return rows, names, arrays, info


def _anomaly(ed, config, images, extras, masks, normal, size, key, out):
  e = config.edit
  levels = 17 if config.data.source == "digits" else 256  # `data.sources`: 0..16, uint8.
  inputs = _conditions(ed.exp, e.labels, e.prompt, size, "config.edit.labels")

  @jax.jit
  def fn(x, k):
    xk = ed.to_model(x)
    den = ed.den(ed.params, inputs, guided=False)
    s = {}
    if "reconstruction" in e.scores:
      s["reconstruction"] = edit.reconstruction_score(den, xk, tuple(e.recon_sigmas), k)
    if "score_norm" in e.scores:
      s["score_norm"] = edit.score_norm(den, xk, e.score_sigma)
    if "bpd" in e.scores:
      s["bpd"] = denoiser_bpd(ed.exp, den, xk, k, levels)
    return s

  scores = _run_batched(fn, [images], size, "anomaly scores", key)
  names = [s for s in SCORES if s in scores]
  info = {"scores": names}
  thresholds = {}
  if normal is not None:
    normal_scores = _run_batched(fn, [normal], min(size, len(normal)), "normal scores",
                                 jax.random.fold_in(key, 1))
    for s in names:
      thresholds[s] = anomaly.threshold(normal_scores[s], e.quantile)
    info["thresholds"] = thresholds
    info["quantile"] = e.quantile
    info["num_normal"] = len(normal)
  labels = extras.get("anomaly")
  if labels is not None:
    for s in names:
      info[f"auroc_{s}"] = anomaly.auroc(scores[s], labels)
      info[f"auprc_{s}"] = anomaly.auprc(scores[s], labels)
      if s in thresholds:
        flagged = scores[s] > thresholds[s]
        info[f"tpr_{s}"] = float(flagged[labels == 1].mean()) if (labels == 1).any() else None
        info[f"fpr_{s}"] = float(flagged[labels == 0].mean()) if (labels == 0).any() else None
    info["num_anomalous"] = int(labels.sum())
  with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["index"] + (["anomaly"] if labels is not None else []) + names
               + [f"flagged_{s}" for s in thresholds])
    for i in range(len(images)):
      w.writerow([i] + ([int(labels[i])] if labels is not None else [])
                 + [f"{float(scores[s][i]):.6g}" for s in names]
                 + [int(scores[s][i] > thresholds[s]) for s in thresholds])
  _score_plots(out, scores, names, labels, thresholds)
  first = scores[names[0]]
  order = np.argsort(first)
  return ([images[order[::-1]], images[order]],
          [f"highest {names[0]}", f"lowest {names[0]}"],
          {"images": images, **{f"score_{s}": scores[s] for s in names},
           **({"anomaly": labels} if labels is not None else {})},
          info)


def _score_plots(out, scores, names, labels, thresholds):
  """histogram.png (normal vs anomalous per score, the threshold dashed) and roc.png."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(4.0 * len(names), 3.2), dpi=100)
  FigureCanvasAgg(fig)
  for j, s in enumerate(names):
    ax = fig.add_subplot(1, len(names), j + 1)
    v = np.asarray(scores[s], np.float64)
    bins = np.linspace(v.min(), v.max(), 40) if v.max() > v.min() else 10
    if labels is not None:
      ax.hist(v[labels == 0], bins=bins, alpha=0.6, label="normal")
      ax.hist(v[labels == 1], bins=bins, alpha=0.6, label="anomalous")
      ax.legend(fontsize=8)
    else:
      ax.hist(v, bins=bins)
    if s in thresholds:
      ax.axvline(thresholds[s], color="k", ls="--", lw=1)
    ax.set_title(s, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "histogram.png"))
  if labels is None or labels.min() == labels.max():
    return
  fig = Figure(figsize=(4.0, 4.0), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for s in names:
    fpr, tpr = anomaly.roc_curve(scores[s], labels)
    ax.plot(fpr, tpr, label=f"{s} (AUROC {anomaly.auroc(scores[s], labels):.3f})")
  ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(os.path.join(out, "roc.png"))
