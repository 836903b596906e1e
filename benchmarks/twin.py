"""This project's train step and DDIM loop against their diffusers twins, interleaved.

    python benchmarks/twin.py [--twin cifar10|mnist|both] [--work train,ddim]
                              [--rounds N] [--steps N] [--batch N]
                              [--precision float32|bfloat16] [--json out.json]

What a user would otherwise pick is diffusers' PyTorch `UNet2DModel` with AdamW,
an EMA and its DDIM scheduler. Both networks are built from one of this project's
configs (``cifar10`` = `configs/cifar10_ddpm.py`, google/ddpm-cifar10-32's layout,
35.7M parameters; ``mnist`` = `configs/mnist_ddpm_cpu.py`, 1.1M) and checked first:

1. the parameter counts, which must be equal;
2. the diffusers net's random weights (1-D parameters moved off their initial
   values, so no GroupNorm or bias is trivial) ported into this project's UNet by
   `diffusion.port.convert`, then both nets' outputs on one random batch: the
   error relative to the output RMS is printed (float32: ~1e-6 expected, see
   tests/test_port.py for the bound) and the script stops if it is above 1e-4.

Then, in rounds that alternate which side goes first:

- **train**: this project's compiled train step (`experiment.build(config)`, its
  `loss_fn` and optimizer, `train.step.make_train_step`, `dist.compile.compile_step`,
  state donated: what ``--mode train`` runs) against the same work in PyTorch
  eager: eps-prediction DDPM loss on the config's linear schedule, backward,
  global-norm clipping at 1, ``torch.optim.AdamW`` (foreach; weight decay 0 = the
  config's Adam), diffusers' ``EMAModel`` (foreach) step. Same batch (fixed random
  images), same dropout, float32 (``--precision bfloat16``: this project's bf16
  activations with float32 params, PyTorch ``autocast(bfloat16)``);
- **ddim**: this project's compiled DDIM sampler (``config.sample`` set to
  ddim, 50 steps, eta 0, `Experiment.sample_fn`: the whole loop one XLA program)
  against diffusers' ``DDIMScheduler`` loop over ``UNet2DModel`` under
  ``torch.inference_mode``, same batch of noise, same schedule.

Each round times ``--steps`` train steps (or one DDIM run) per side, each side
ended by ``block_until_ready`` / ``cuda.synchronize``. Reported: the median time
per step of each side over rounds, the **paired ratio** (PyTorch time / JAX time
of the same round = JAX / PyTorch throughput; > 1 means this project is faster),
its median and min..max over rounds, and the other processes' share of all CPU
cores during the rounds (`cpu_load.LoadMeter`: /proc/stat busy minus this
process's own CPU time; on a shared machine this is the figure that says how much
to trust the others). The first call of each side (JAX: lower + compile + one
step; PyTorch: the first eager step) and, on GPU, the peak device memory of each
side and the MFU (model FLOPs of the JAX step from XLA's cost analysis, which
counts the same network on both sides, over the chip's bf16 peak) are printed too.

torch and diffusers come from `benchmarks/requirements.txt` (not the package's
requirements). On a GPU both sides run there (``--device`` default: the GPU if
JAX sees one); float32 then uses TF32 on both (XLA's default for float32 convs
and matmuls on NVIDIA; PyTorch's ``allow_tf32`` is set for matmuls and cuDNN).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.join(_ROOT, "benchmarks")):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import diffusion  # noqa: E402,F401  (the CPU XLA defaults, before JAX starts)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import cpu_load  # noqa: E402
from train_step import flops_of, peak_flops  # noqa: E402
from diffusion import experiment, port  # noqa: E402
from diffusion.dist import compile as compile_lib  # noqa: E402
from diffusion.dist import placement  # noqa: E402
from diffusion.models import layers, unet as unet_lib  # noqa: E402
from diffusion.train import step as train_step  # noqa: E402

TWINS = {"cifar10": ("configs.cifar10_ddpm", 8), "mnist": ("configs.mnist_ddpm_cpu", 64)}
MAX_REL_ERR = 1e-4  # Of the output RMS; float32 ports measure ~1e-6 (tests/test_port.py).


def load_config(name: str, batch: int, precision: str):
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(TWINS[name][0]).get_config()
  config.data.batch_size = batch
  config.train.precision = precision
  config.sample.method, config.sample.num_steps, config.sample.eta = "ddim", 50, 0.0
  config.sample.num_samples = batch
  return config


def _with_precision(config, precision: str):
  config = config.copy_and_resolve_references()
  config.train.precision = precision
  return config


def unet2d_kwargs(config) -> dict:
  """diffusers `UNet2DModel` settings computing this project's UNet of `config`
  (the inverse of `port.unet_fields`; GroupNorm group counts are set per module
  after construction, `match_groups`, since diffusers has one count for all)."""
  m, d = config.model, config.data
  if m.resblock_updown or m.scale_shift_norm or m.skip_rescale or m.num_classes is not None \
      or m.embedding != "sinusoidal" or not m.resamp_with_conv or m.num_heads != 1:
    raise SystemExit("twin.py: only DDPM-layout UNets have a diffusers twin")
  levels = len(m.channel_mult)
  attn = [d.image_size // 2 ** i in m.attention_resolutions for i in range(levels)]
  return dict(
      sample_size=d.image_size, in_channels=d.channels, out_channels=d.channels,
      block_out_channels=tuple(m.ch * k for k in m.channel_mult),
      layers_per_block=m.num_res_blocks,
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
      attention_head_dim=None, norm_eps=1e-6, norm_num_groups=layers.norm_groups(m.ch),
      flip_sin_to_cos=False, freq_shift=1, downsample_padding=m.downsample_padding,
      act_fn="silu", center_input_sample=False, mid_block_scale_factor=1,
      time_embedding_type="positional", dropout=m.dropout)


def match_groups(net) -> None:
  """Every GroupNorm of `net` to this project's ``min(32, C / 4)`` groups."""
  import torch  # pylint: disable=g-import-not-at-top
  for module in net.modules():
    if isinstance(module, torch.nn.GroupNorm):
      module.num_groups = layers.norm_groups(module.num_channels)


class Jax:
  """This project's side: the train step and DDIM sampler of `config`."""

  def __init__(self, config, images, weights):
    self.exp = experiment.build(config)
    state = self.exp.init_state()
    ported = port.convert(weights, jax.device_get(state.params), len(config.model.channel_mult))
    ported = jax.tree.map(jnp.asarray, ported)
    self.state = state.replace(params=jax.tree.map(jnp.copy, ported), ema_params=jax.tree.map(jnp.copy, ported))
    self.params = ported
    mesh = placement.make_mesh(jax.local_devices())
    self.step = compile_lib.compile_step(
        train_step.make_train_step(self.exp.loss_fn, self.exp.tx, config), "jit", mesh)
    self.batch = self.step.shard_batch({"image": images})
    self.state = self.step.replicate(self.state)
    self.sample = None
    self.num_params = unet_lib.param_count(ported)
    # The output check runs the float32 net at full precision (no TF32 / bf16).
    self.check_model = experiment.build_model(_with_precision(config, "float32"))

  def output(self, x, t):
    with jax.default_matmul_precision("highest"):
      return np.asarray(self.check_model.apply({"params": self.params}, jnp.asarray(x),
                                               jnp.asarray(t), None, train=False))

  def first_step(self) -> dict:
    t0 = time.perf_counter()
    lowered = self.step.fn.lower(self.state, self.batch)
    executable = lowered.compile()
    t1 = time.perf_counter()
    self.step = dataclasses.replace(self.step, fn=executable)
    self.train(1)
    t2 = time.perf_counter()
    return {"compile_s": t1 - t0, "first_step_s": t2 - t1, "flops": flops_of(executable)}

  def train(self, steps: int) -> None:
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    train_step.check_finite(metrics, 0)

  def first_ddim(self) -> dict:
    fn = self.exp.sample_fn()
    t0 = time.perf_counter()
    self.sample = fn.lower(self.params, self.exp.sample_key).compile()
    t1 = time.perf_counter()
    self.ddim()
    return {"compile_s": t1 - t0, "first_run_s": time.perf_counter() - t1}

  def ddim(self) -> None:
    jax.block_until_ready(self.sample(self.params, self.exp.sample_key))

  def peak_bytes(self):
    try:
      return int(jax.local_devices()[0].memory_stats()["peak_bytes_in_use"])
    except Exception:  # CPU: no device statistics
      return None


class Torch:
  """The diffusers side: `UNet2DModel` + AdamW + EMA, and the DDIMScheduler loop."""

  def __init__(self, config, images, device, precision):
    import torch  # pylint: disable=g-import-not-at-top
    from diffusers import DDIMScheduler, UNet2DModel  # pylint: disable=g-import-not-at-top
    from diffusers.training_utils import EMAModel  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = torch.device(device)
    torch.manual_seed(0)
    net = UNet2DModel(**unet2d_kwargs(config))
    match_groups(net)
    with torch.no_grad():
      for p in net.parameters():
        if p.ndim == 1:
          p.add_(0.1 * torch.randn_like(p))
    self.weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    self.net = net.to(self.device)
    self.num_params = sum(p.numel() for p in net.parameters())
    o = config.optim
    self.opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                 eps=o.eps, weight_decay=o.weight_decay, foreach=True)
    self.ema = EMAModel(net.parameters(), decay=config.ema.decay, foreach=True)
    self.ema.to(self.device)
    self.clip = o.grad_clip
    d = config.diffusion
    betas = np.linspace(1e-4, 0.02, d.num_steps) if d.schedule == "linear" else None
    if betas is None:
      raise SystemExit("twin.py: only the linear schedule has a diffusers twin here")
    ab = np.cumprod(1.0 - betas)
    self.alphas_cumprod = torch.tensor(ab, dtype=torch.float32, device=self.device)
    self.num_steps = d.num_steps
    self.images = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2), device=self.device)
    self.gen = torch.Generator(device=self.device).manual_seed(0)
    self.autocast = precision == "bfloat16"
    self.scheduler = DDIMScheduler(num_train_timesteps=d.num_steps, beta_start=1e-4,
                                   beta_end=0.02, beta_schedule="linear",
                                   clip_sample=config.sample.clip_denoised,
                                   set_alpha_to_one=False, prediction_type="epsilon")
    self.ddim_steps = config.sample.num_steps
    self.noise = torch.randn(self.images.shape, generator=self.gen, device=self.device)

  def output(self, x, t):
    torch = self.torch
    self.net.eval()
    with torch.no_grad():
      out = self.net(torch.tensor(x.transpose(0, 3, 1, 2), device=self.device),
                     torch.tensor(t, device=self.device)).sample
    self.net.train()
    return out.cpu().numpy().transpose(0, 2, 3, 1)

  def sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def train(self, steps: int) -> None:
    torch = self.torch
    self.net.train()
    for _ in range(steps):
      x0 = self.images
      t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=self.gen,
                        device=self.device)
      eps = torch.randn(x0.shape, generator=self.gen, device=self.device)
      ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
      x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
        pred = self.net(x_t, t).sample
      loss = torch.nn.functional.mse_loss(pred.float(), eps)
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip, foreach=True)
      self.opt.step()
      self.ema.step(self.net.parameters())
    self.sync()
    if not math.isfinite(loss.item()):
      raise SystemExit("twin.py: the PyTorch loss is not finite")

  def ddim(self) -> None:
    torch = self.torch
    self.net.eval()
    self.scheduler.set_timesteps(self.ddim_steps)
    x = self.noise.clone()
    with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                enabled=self.autocast):
      for t in self.scheduler.timesteps:
        eps = self.net(x, t.to(self.device)).sample
        x = self.scheduler.step(eps.float(), t, x).prev_sample
    self.sync()
    self.net.train()

  def peak_bytes(self):
    if self.device.type != "cuda":
      return None
    return int(self.torch.cuda.max_memory_allocated(self.device))


def interleave(rounds: int, jax_fn, torch_fn, per_round: int) -> dict:
  """Per-round seconds per unit of each side (alternating which goes first), the
  paired ratios torch / jax and the other processes' CPU share over all rounds."""
  jt, tt = [], []
  meter = cpu_load.LoadMeter()
  for r in range(rounds):
    order = ((jax_fn, jt), (torch_fn, tt)) if r % 2 == 0 else ((torch_fn, tt), (jax_fn, jt))
    for fn, out in order:
      t0 = time.perf_counter()
      fn()
      out.append((time.perf_counter() - t0) / per_round)
  ratios = [b / a for a, b in zip(jt, tt)]
  return {"jax_s": jt, "torch_s": tt, "ratios": ratios,
          "jax_median_s": statistics.median(jt), "torch_median_s": statistics.median(tt),
          "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
          "ratio_max": max(ratios), **meter.shares()}


def run_twin(name: str, args, device: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  batch = args.batch or (TWINS[name][1] if device == "cpu" else 128)
  config = load_config(name, batch, args.precision)
  shape = (batch, config.data.image_size, config.data.image_size, config.data.channels)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  side_t = Torch(config, images, device, args.precision)
  side_j = Jax(config, images, side_t.weights)
  out = {"twin": name, "batch": batch, "precision": args.precision,
         "params_jax": side_j.num_params, "params_torch": side_t.num_params}
  x = np.random.default_rng(1).standard_normal((4,) + shape[1:]).astype(np.float32)
  t = np.array([0, 10, 500, 999], np.int32)
  if device == "cuda":  # The check at full float32; the timed work may use TF32 (below).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  a, b = side_j.output(x, t), side_t.output(x, t)
  out["port_rel_err"] = float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))
  print(f"[{name}] parameters: this project {side_j.num_params:,}, diffusers "
        f"{side_t.num_params:,}; ported-weights output error / RMS = "
        f"{out['port_rel_err']:.2e}", flush=True)
  if side_j.num_params != side_t.num_params or not out["port_rel_err"] < MAX_REL_ERR:
    raise SystemExit(f"twin.py: the {name} nets are not twins (parameters or outputs differ)")
  if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  if "train" in args.work:
    first = side_j.first_step()
    t0 = time.perf_counter()
    side_t.train(1)
    first["torch_first_step_s"] = time.perf_counter() - t0
    side_j.train(args.warmup)
    side_t.train(args.warmup)
    steps = args.steps or (3 if name == "cifar10" and device == "cpu" else 10)
    res = interleave(args.rounds, lambda: side_j.train(steps), lambda: side_t.train(steps), steps)
    res.update(first, steps_per_round=steps, jax_peak_bytes=side_j.peak_bytes(),
               torch_peak_bytes=side_t.peak_bytes())
    if first["flops"]:
      res["gflops_per_step"] = first["flops"] / 1e9
      res["jax_tflops"] = first["flops"] / res["jax_median_s"] / 1e12
      res["torch_tflops"] = first["flops"] / res["torch_median_s"] / 1e12
      peak = peak_flops(jax.devices()[0].device_kind, "bfloat16")
      if peak:
        res["mfu_jax_vs_bf16_peak"] = first["flops"] / res["jax_median_s"] / peak
        res["mfu_torch_vs_bf16_peak"] = first["flops"] / res["torch_median_s"] / peak
    out["train"] = res
    print(f"[{name}] train step, batch {batch}, {args.precision}: this project "
          f"{1e3 * res['jax_median_s']:.1f} ms ({batch / res['jax_median_s']:.1f} images/s), "
          f"diffusers {1e3 * res['torch_median_s']:.1f} ms ({batch / res['torch_median_s']:.1f}); "
          f"JAX/PyTorch throughput {res['ratio_median']:.3f} "
          f"({res['ratio_min']:.3f}..{res['ratio_max']:.3f} over {args.rounds} rounds); "
          f"other load {100 * res['other_load_share']:.1f}% of the cores; "
          f"JAX compile {first['compile_s']:.1f} s + first step {first['first_step_s']:.2f} s, "
          f"PyTorch first step {first['torch_first_step_s']:.2f} s", flush=True)
    if "mfu_jax_vs_bf16_peak" in res:
      print(f"[{name}] {res['gflops_per_step']:.0f} GFLOP/step: this project "
            f"{res['jax_tflops']:.1f} TFLOP/s (MFU {100 * res['mfu_jax_vs_bf16_peak']:.1f}% of "
            f"bf16 peak), diffusers {res['torch_tflops']:.1f} TFLOP/s; peak memory "
            f"{(res['jax_peak_bytes'] or 0) / 2**30:.2f} / "
            f"{(res['torch_peak_bytes'] or 0) / 2**30:.2f} GiB", flush=True)
  if "ddim" in args.work:
    first = side_j.first_ddim()
    t0 = time.perf_counter()
    side_t.ddim()
    first["torch_first_run_s"] = time.perf_counter() - t0
    res = interleave(args.ddim_rounds, side_j.ddim, side_t.ddim, 1)
    res.update(first)
    out["ddim"] = res
    print(f"[{name}] DDIM-50, batch {batch}: this project {res['jax_median_s']:.2f} s, "
          f"diffusers {res['torch_median_s']:.2f} s; JAX/PyTorch throughput "
          f"{res['ratio_median']:.3f} ({res['ratio_min']:.3f}..{res['ratio_max']:.3f} over "
          f"{args.ddim_rounds} rounds); other load {100 * res['other_load_share']:.1f}%; "
          f"JAX compile {first['compile_s']:.1f} s", flush=True)
  return out


def environment(device: str) -> dict:
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind, "device": device,
          "jax": jax.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
          "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--twin", choices=(*TWINS, "both"), default="both")
  p.add_argument("--work", default="train,ddim", help="comma list of train, ddim")
  p.add_argument("--rounds", type=int, default=5, help="interleaved train rounds")
  p.add_argument("--ddim-rounds", type=int, default=3, help="interleaved DDIM rounds")
  p.add_argument("--steps", type=int, default=0,
                 help="train steps per round (default 3 for cifar10 on CPU, else 10)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps of each side")
  p.add_argument("--batch", type=int, default=0,
                 help="default: the twin's CPU batch (8 cifar10, 64 mnist); 128 on GPU")
  p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  args.work = [w.strip() for w in args.work.split(",") if w.strip()]
  bad = sorted(set(args.work) - {"train", "ddim"})
  if bad or not args.work:
    p.error(f"--work: unknown {bad or 'empty'} (allowed: train, ddim)")
  if args.rounds < 1 or args.ddim_rounds < 1:
    p.error("--rounds and --ddim-rounds must be >= 1")
  try:
    import diffusers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise SystemExit(f"twin.py needs torch and diffusers ({e}): "
                     "pip install -r benchmarks/requirements.txt")
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  env = environment(device)
  print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  names = list(TWINS) if args.twin == "both" else [args.twin]
  results = [run_twin(n, args, device) for n in names]
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"environment": env, "results": results}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
