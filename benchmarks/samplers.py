"""Sampler wall-time benchmark: compile time, time per step / per model evaluation.

    python benchmarks/samplers.py [--batch 32] [--size 16] [--steps 1000] [--repeats 5] [--json out.json]

Every sampler of `diffusion.core.samplers` is jit-compiled whole (shape and
num_steps static; the model parameters and the key are arguments) around a
fixed small conv "model" (pure jnp, deterministic parameters). For each one
the script measures

- compile time (``lower`` + ``compile``), separately from the run time;
- run time: one warm-up call, then the median of ``--repeats`` calls, each
  ended by ``jax.block_until_ready``; reported per step and per model
  evaluation (NFE);
- the time of ONE jitted call of a single step (the model plus that
  sampler's update arithmetic, same batch, time as an argument so nothing is
  constant-folded; mean of `--single-calls` back-to-back calls), and the ratio
  ``(time per step inside the compiled loop) / (one jitted single step)``.

The ratio checks that the compiled loop makes no host round trip per step:
a ``lax.scan`` loop pays no per-step dispatch, so the ratio should be at most
1.2 (usually below 1). For rk45, whose steps are adaptive, the ratio is taken
per model evaluation against ``integrate_adaptive(..., max_steps=1)``.

The sigma-space solvers of `samplers.sigma` (rows ``sigma ...``; ``--only sigma``)
run the same model as a VP denoiser ``D(x, sigma) = x - sigma eps(x / sqrt(1 +
sigma^2), t(sigma))`` (`make_denoise_fn`) over ``karras_sigmas(steps, 0.002, 80,
rho=7)``. Their single step is the solver's own step function (captured from
`samplers.sigma._walk`, `_sigma_step`) at the middle of the grid, dpmpp_2m's
history passed in as an argument; the loop's last step to sigma = 0 is one
evaluation, so a k-NFE solver's loop counts as ``NFE / k`` steps (marked ``^``).
For each of them the script also checks the jaxpr of the whole sampler
(`loop_structure`): exactly one ``scan``, no ``while`` and no host callback, and for
dpmpp_2m an image-shaped history array in the scan carry beside ``x``; the exit
status is 1 if any ratio or structure check fails.

Runs unchanged on CPU or GPU. Results are wall times on a possibly shared
machine: take them as medians, not as exact figures.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from unittest import mock

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# Importing the package applies its CPU XLA defaults; it must come before JAX starts.
from diffusion import _xla_flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffusion.core import grids  # noqa: E402
from diffusion.core import ode  # noqa: E402
from diffusion.core import processes  # noqa: E402
from diffusion.core import samplers  # noqa: E402
from diffusion.core import schedules  # noqa: E402
from diffusion.core import sdes  # noqa: E402
from diffusion.core.samplers import sigma as sigma_samplers  # noqa: E402
from jax.extend import core as jex_core  # noqa: E402

_b = schedules.broadcast_to
RATIO_LIMIT = 1.2


# --------------------------------------------------------------------------
# The model: a fixed 2-layer 3x3 conv net with a sinusoidal time embedding.
# --------------------------------------------------------------------------


def init_params(key, channels: int = 32, in_ch: int = 1, emb_dim: int = 16):
  """Deterministic parameters for `model_apply` (pure jnp, no Flax)."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "w1": jax.random.normal(k1, (3, 3, in_ch, channels)) / math.sqrt(9 * in_ch),
      "b1": jnp.zeros((channels,)),
      "wt": jax.random.normal(k2, (emb_dim, channels)) / math.sqrt(emb_dim),
      "w2": jax.random.normal(k3, (3, 3, channels, in_ch)) / math.sqrt(9 * channels),
      "b2": jnp.zeros((in_ch,)),
  }


def model_apply(params, x, t):
  """``x`` [B, H, W, C] NHWC, ``t`` float [B] in [0, 1] -> output shaped like ``x``."""
  conv = functools.partial(
      jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  half = params["wt"].shape[0] // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
  ang = (1000.0 * t)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1) @ params["wt"]  # [B, C]
  h = conv(x, params["w1"]) + params["b1"] + emb[:, None, None, :]
  h = jax.nn.silu(h)
  return conv(h, params["w2"]) + params["b2"]


def model_flops(size: int, in_ch: int, channels: int) -> int:
  """Multiply-adds x 2 of the two convs per image (the embedding is negligible)."""
  return 2 * 2 * size * size * 9 * in_ch * channels


def make_eps_fn(params, T: int):
  return lambda x, t: model_apply(params, x, t.astype(jnp.float32) / T)


def make_denoise_fn(params, sde):
  """The same eps model as a sigma-space denoiser ``D(x~, sigma [B]) -> x0``.

  A VP model read in sigma space (what `Denoiser.sigma_fn` does for a continuous VP
  eps model): ``t = processes.time_at_sigma(sde, sigma)`` (closed form for the VPSDE),
  ``D = x~ - sigma eps(x~ / sqrt(1 + sigma^2), t)``.
  """
  def denoise(x, s):
    t = processes.time_at_sigma(sde, s)
    return x - _b(s, x) * model_apply(params, _b(jax.lax.rsqrt(1.0 + s**2), x) * x, t)
  return denoise


def make_score_fn(params, sde):
  def score_fn(x, t):
    _, std = sde.marginal_coeffs(t)
    return -model_apply(params, x, t) / _b(std, x)
  return score_fn


# --------------------------------------------------------------------------
# Cases: (full compiled sampler, one jitted step of the same arithmetic).
# --------------------------------------------------------------------------


def _normal(key, i, x):
  return jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)


def ddpm_case(sched, shape, variance="beta"):
  B = shape[0]
  var_table = sched.betas if variance == "beta" else sched.posterior_variances

  def full(params, rng):
    return samplers.ddpm(make_eps_fn(params, sched.num_steps), sched, rng, shape, variance=variance)

  def single(params, x, key, t):  # t: int32 scalar
    tb = jnp.full((B,), t, jnp.int32)
    a = _b(sched.alpha_bars[tb], x)
    eps = make_eps_fn(params, sched.num_steps)(x, tb)
    x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    mean, _, _ = schedules.q_posterior(sched, x0, x, tb)
    std = jnp.where(t > 0, jnp.sqrt(var_table[t]), 0.0)
    return mean + std * _normal(key, t, x)

  return dict(name="ddpm", steps=sched.num_steps, nfe=sched.num_steps, full=full,
              single=single, t=jnp.asarray(sched.num_steps // 2, jnp.int32))


def ddim_case(sched, shape, num_steps, eta):
  B = shape[0]
  T = sched.num_steps

  def full(params, rng):
    return samplers.ddim(make_eps_fn(params, T), sched, rng, shape, num_steps=num_steps, eta=eta)

  def single(params, x, key, pair):  # pair: int32 [2] = (t, t_prev)
    t, t_prev = pair[0], pair[1]
    a = sched.alpha_bars[t]
    a_prev = jnp.where(t_prev >= 0, sched.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
    eps = make_eps_fn(params, T)(x, jnp.full((B,), t, jnp.int32))
    x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    s = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - s**2, 0.0)) * eps
    return x + s * _normal(key, t, x)

  taus = samplers.ddim_timesteps(T, num_steps)
  mid = len(taus) // 2
  pair = jnp.asarray([taus[mid], taus[mid - 1] if mid > 0 else -1], jnp.int32)
  return dict(name=f"ddim S={num_steps} eta={eta:g}", steps=num_steps, nfe=num_steps,
              full=full, single=single, t=pair)


def euler_maruyama_case(sde, shape, num_steps, eps=1e-3):
  B = shape[0]
  dt = (1.0 - eps) / num_steps

  def full(params, rng):
    return samplers.euler_maruyama(make_score_fn(params, sde), sde, rng, shape, num_steps=num_steps,
                                   eps=eps)

  def single(params, x, key, t):  # t: float32 scalar
    z = _normal(jax.random.fold_in(key, 0), 0, x)
    pred = samplers.PREDICTORS["euler_maruyama"]
    return pred(sde, make_score_fn(params, sde), x, jnp.full((B,), t), dt, z)[0]

  return dict(name="euler_maruyama", steps=num_steps, nfe=num_steps, full=full, single=single,
              t=jnp.asarray(0.5, jnp.float32))


def pc_case(sde, shape, num_steps, snr=0.16, eps=1e-3):
  B = shape[0]
  dt = (1.0 - eps) / num_steps

  def full(params, rng):
    return samplers.predictor_corrector(
        make_score_fn(params, sde), sde, rng, shape, num_steps=num_steps,
        predictor="reverse_diffusion", corrector="langevin", snr=snr, corrector_steps=1, eps=eps)

  def single(params, x, key, t):  # one Langevin corrector step, then the predictor
    score_fn = make_score_fn(params, sde)
    tb = jnp.full((B,), t)
    grad = score_fn(x, tb)
    z = _normal(jax.random.fold_in(key, 1), 0, x)
    step = _b(samplers.CORRECTORS["langevin"](sde, x, tb, dt, grad, z, snr), x)
    x = x + step * grad + jnp.sqrt(2.0 * step) * z
    pred = samplers.PREDICTORS["reverse_diffusion"]
    return pred(sde, score_fn, x, tb, dt, _normal(key, 0, x))[0]

  return dict(name="pc reverse_diffusion+langevin", steps=num_steps, nfe=2 * num_steps, full=full,
              single=single, t=jnp.asarray(0.5, jnp.float32))


def pf_case(sde, shape, num_steps, method, eps=1e-3):
  B = shape[0]
  h = -(1.0 - eps) / num_steps

  def full(params, rng):
    return samplers.probability_flow(make_score_fn(params, sde), sde, rng, shape,
                                     num_steps=num_steps, method=method, eps=eps)

  def single(params, x, key, t):
    del key
    score_fn = make_score_fn(params, sde)
    drift = lambda y, s: sde.probability_flow_drift(score_fn, y, jnp.full((B,), s))
    return ode.FIXED_STEP[method][0](drift, x, t, h)

  nfe = num_steps * ode.FIXED_STEP[method][1]
  return dict(name=f"probability_flow {method}", steps=num_steps, nfe=nfe, full=full,
              single=single, t=jnp.asarray(0.5, jnp.float32))


def rk45_case(sde, shape, max_steps, eps=1e-3):
  B = shape[0]

  def full(params, rng):
    return samplers.probability_flow_adaptive(make_score_fn(params, sde), sde, rng, shape,
                                              max_steps=max_steps, eps=eps)

  def single(params, x, key, t):  # one accepted-or-rejected DP5(4) attempt (+ the first eval)
    del key
    score_fn = make_score_fn(params, sde)
    drift = lambda y, s: sde.probability_flow_drift(score_fn, y, jnp.full((B,), s))
    return ode.integrate_adaptive(drift, x, t, eps, max_steps=1)

  return dict(name="probability_flow rk45", steps=None, nfe=None, full=full, single=single,
              t=jnp.asarray(1.0, jnp.float32), per_eval=True)


# Sigma-space solvers (`samplers.sigma`) on a Karras grid.
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
# EDM's ImageNet-64 setting of Alg. 2 (Karras et al. 2022, Table 5).
EDM_CHURN = dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)


def _sigma_step(solver, denoise, sigmas, shape, kwargs):
  """The solver's own per-step function and carry, as its ``lax.scan`` runs them.

  Every solver of `samplers.sigma` hands ``step(carry, x, sigma, sigma_next, i, e, key)``
  (model call(s) + update, the multistep history in ``carry``) to the module's `_walk`;
  calling the solver once with `_walk` replaced captures exactly that function, so
  the single-step reference is the loop body itself, not a copy of its formulas.
  """
  got = {}

  def capture(step, final, *args, carry_init=None, extra=None, **kw):
    del final, args, kw
    got.update(step=step, carry_init=carry_init, extra=extra)
    return jnp.zeros(shape, jnp.float32)

  with mock.patch.object(sigma_samplers, "_walk", capture):
    solver(denoise, sigmas, jax.random.PRNGKey(0), shape, **kwargs)
  if "step" not in got:
    raise RuntimeError(f"{solver.__name__} did not call samplers.sigma._walk: update the benchmark")
  return got


def sigma_case(sde, shape, num_steps, name, label=None, order=None, **kwargs):
  """`samplers.sigma.<name>` over ``karras_sigmas(num_steps, 0.002, 80, 7)``.

  The single step is the middle step ``sigmas[m] -> sigmas[m + 1]`` (m = N // 2) of
  the solver's own step function (`_sigma_step`); sigma, sigma_next, the step index,
  the step's extra input (EDM's gamma_i) and the carry (dpmpp_2m: the previous x0 and
  h) are all arguments, so nothing is constant-folded and dpmpp_2m's history
  arithmetic runs (i > 0). The loop's last step to sigma = 0 is one evaluation, so the
  ratio is taken against ``nfe / (evaluations per step)`` single steps.
  """
  solver = getattr(sigma_samplers, name)
  if order is not None:
    kwargs["order"] = order
  sigmas = grids.karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, RHO)
  nfe = sigma_samplers.nfe(name, num_steps, order=order or 1)
  per_step = sigma_samplers.nfe(name, 1, ends_at_zero=False, order=order or 1)
  m = num_steps // 2

  def full(params, rng):
    return solver(make_denoise_fn(params, sde), sigmas, rng, shape, **kwargs)

  def single(params, x, key, a):
    got = _sigma_step(solver, make_denoise_fn(params, sde), sigmas, shape, kwargs)
    carry = a.get("carry", got["carry_init"])
    return got["step"](carry, x, a["sigma"], a["sigma_next"], a["i"], a["e"], key)

  probe = _sigma_step(solver, lambda x, s: x, sigmas, shape, kwargs)
  extra = probe["extra"]
  arg = {"sigma": sigmas[m], "sigma_next": sigmas[m + 1], "i": jnp.asarray(m, jnp.int32),
         "e": jnp.float32(0.0) if extra is None else jnp.asarray(extra, jnp.float32)[m]}
  if probe["carry_init"] is not None:  # multistep: a previous x0 and h_{i-1} as arguments
    x0_prev, _ = probe["carry_init"]
    arg["carry"] = (jnp.full(x0_prev.shape, 0.1, x0_prev.dtype),
                    jnp.log(sigmas[m - 1] / sigmas[m]))
  return dict(name=f"sigma {label or name}", steps=num_steps, nfe=nfe, full=full,
              single=single, t=arg, unit=nfe / per_step, nfe_per_step=per_step, sigma_solver=name,
              shape=tuple(shape))


def sigma_cases(sde, shape, num_steps):
  return [
      sigma_case(sde, shape, num_steps, "euler", "euler eta=0", eta=0.0),
      sigma_case(sde, shape, num_steps, "euler", "euler eta=1", eta=1.0),
      sigma_case(sde, shape, num_steps, "heun"),
      sigma_case(sde, shape, num_steps, "edm_stochastic", "edm_stochastic churn=40", **EDM_CHURN),
      *[sigma_case(sde, shape, num_steps, "dpm_solver", f"dpm_solver order={k}", order=k)
        for k in sigma_samplers.DPM_ORDERS],
      sigma_case(sde, shape, num_steps, "dpmpp_2m"),
      *[sigma_case(sde, shape, num_steps, "dpmpp_singlestep", f"dpmpp_singlestep order={k}",
                   order=k) for k in (2, 3)],
  ]


# --------------------------------------------------------------------------
# Structure: the compiled loop is one scan, with no host callback.
# --------------------------------------------------------------------------


def _eqns(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' params."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jex_core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def loop_structure(case, params, rng):
  """Counts the scans, while loops and host callbacks in the jaxpr of ``case["full"]``.

  PASS: exactly one ``scan`` (the whole loop), no ``while`` and no callback primitive
  (``pure_callback``, ``io_callback``, ``debug_callback``, ...). A multistep solver
  must also carry an image-shaped array besides ``x`` (its history) in that scan.
  """
  jaxpr = jax.make_jaxpr(case["full"])(params, rng).jaxpr
  eqns = list(_eqns(jaxpr))
  scans = [e for e in eqns if e.primitive.name == "scan"]
  whiles = [e for e in eqns if e.primitive.name == "while"]
  callbacks = sorted({e.primitive.name for e in eqns
                      if "callback" in e.primitive.name or "outside_call" in e.primitive.name})
  carry = []
  if len(scans) == 1:
    p = scans[0].params
    body_in = p["jaxpr"].in_avals
    carry = [a.str_short() for a in body_in[p["num_consts"]:p["num_consts"] + p["num_carry"]]]
  image = f"float32[{','.join(map(str, case['shape']))}]"
  history = sum(c == image for c in carry) - 1  # beyond x itself
  need_history = case["sigma_solver"] == "dpmpp_2m"
  ok = len(scans) == 1 and not whiles and not callbacks and (history >= 1 or not need_history)
  return dict(sampler=case["name"], scans=len(scans), whiles=len(whiles), callbacks=callbacks,
              scan_length=scans[0].params["length"] if len(scans) == 1 else None,
              carry=carry, history_arrays=history, passed=bool(ok))


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------


def _compile(fn, *args):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0, out


def _wall_and_cpu(fn, n=1):
  """Wall time and process CPU time (all threads) of ``n`` calls of ``fn``, per call."""
  w0, c0 = time.perf_counter(), time.process_time()
  for _ in range(n):
    fn()
  return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def run_case(case, params, rng, x, repeats: int, single_calls: int):
  """Compiles and times one case; loop runs and single-step batches are interleaved.

  Each repeat times one call of the compiled sampler between two halves of
  ``single_calls`` back-to-back calls of the jitted single step (each ended by
  ``block_until_ready``, so each pays its dispatch and host sync, as a Python
  loop over steps would). A repeat's ratio pairs the two measurements taken
  under the same machine load; the reported figures are medians over repeats.
  Wall time and process CPU time are both recorded.
  """
  full, compile_s = _compile(case["full"], params, rng)
  key = jax.random.PRNGKey(1)
  single, single_compile_s = _compile(case["single"], params, x, key, case["t"])
  _, out = _timed(full, params, rng)  # warm-up
  _, sout = _timed(single, params, x, key, case["t"])  # warm-up

  steps, nfe, extra = case["steps"], case["nfe"], {}
  if case.get("per_eval"):
    stats = jax.device_get(out[1])
    steps, nfe = int(stats["steps"]), int(stats["nfe"])
    extra = {"rejected": int(stats["rejected"]), "reached_end": bool(stats["reached_end"])}
    single_nfe = int(jax.device_get(sout[1]["nfe"]))
    unit = nfe / single_nfe  # single calls per loop, on a per-evaluation basis
    basis = f"per NFE (vs {single_nfe}-NFE call)"
  elif case.get("unit", steps) != steps:  # a last step to sigma = 0 of fewer evaluations
    unit = case["unit"]
    basis = (f"per {case['nfe_per_step']}-NFE step: {case['nfe']} NFE = {unit:g} steps, "
             "the last (to sigma 0) being 1 NFE")
  else:
    unit = steps
    basis = "per step"

  run_loop = lambda: jax.block_until_ready(full(params, rng))
  run_single = lambda: jax.block_until_ready(single(params, x, key, case["t"]))
  runs, singles, ratios, cpu_runs, cpu_ratios = [], [], [], [], []
  half = max(1, single_calls // 2)
  for _ in range(repeats):
    # Single-step calls before and after the loop run, so both see the same load.
    one_a, one_cpu_a = _wall_and_cpu(run_single, half)
    run, run_cpu = _wall_and_cpu(run_loop)
    one_b, one_cpu_b = _wall_and_cpu(run_single, half)
    one, one_cpu = (one_a + one_b) / 2, (one_cpu_a + one_cpu_b) / 2
    runs.append(run)
    singles.append(one)
    ratios.append(run / unit / one)
    cpu_runs.append(run_cpu)
    cpu_ratios.append(run_cpu / unit / one_cpu)

  med = statistics.median
  run_s, ratio = med(runs), med(ratios)
  return dict(
      sampler=case["name"], steps=steps, nfe=nfe, compile_s=compile_s, run_s=run_s,
      run_s_all=runs, ms_per_step=1e3 * run_s / steps, ms_per_nfe=1e3 * run_s / nfe,
      single_step_ms=1e3 * med(singles), single_step_ms_all=[1e3 * s for s in singles],
      single_compile_s=single_compile_s, ratio=ratio, ratio_all=ratios, ratio_basis=basis,
      passed=bool(ratio <= RATIO_LIMIT),
      cpu_run_s=med(cpu_runs), cpu_ms_per_step=1e3 * med(cpu_runs) / steps,
      cpu_ratio=med(cpu_ratios), cpu_ratio_all=cpu_ratios, **extra,
  )


def build_cases(steps: int, shape):
  sched = schedules.get("linear", num_steps=steps)
  sde = sdes.VPSDE(beta_min=0.1, beta_max=20.0)
  short = [ddim_case(sched, shape, 50, eta) for eta in (0.0, 1.0)] if steps > 50 else []
  return [
      ddpm_case(sched, shape),
      *short,
      ddim_case(sched, shape, steps, 0.0),
      ddim_case(sched, shape, steps, 1.0),
      euler_maruyama_case(sde, shape, steps),
      pc_case(sde, shape, steps),
      pf_case(sde, shape, steps, "euler"),
      pf_case(sde, shape, steps, "heun"),
      rk45_case(sde, shape, steps),
      *sigma_cases(sde, shape, steps),
  ]


def environment(args, shape):
  dev = jax.devices()[0]
  xla_flags = os.environ.get("XLA_FLAGS", "")
  return {
      "backend": jax.default_backend(),
      "device_kind": dev.device_kind,
      "num_devices": jax.device_count(),
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
      "python": platform.python_version(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "xla_flags": xla_flags,
      "ynn_fusion_disabled": _xla_flags.YNN_FLAG in xla_flags.split(),
      "batch": args.batch,
      "shape": list(shape),
      "channels": args.channels,
      "model_flops_per_image": model_flops(args.size, 1, args.channels),
      "steps": args.steps,
      "repeats": args.repeats,
      "single_calls": args.single_calls,
  }


def _jaxlib_version():
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("jaxlib")
  except Exception:  # pragma: no cover
    return None


def _ratio_mark(basis):
  """'' per step, '*' per model evaluation (rk45), '^' per k-NFE step (sigma solvers)."""
  return "" if basis == "per step" else "*" if basis.startswith("per NFE") else "^"


def format_table(rows):
  head = ("sampler", "steps", "NFE", "compile s", "run s", "ms/step", "ms/NFE",
          "1 step ms", "ratio", "", "cpu ms/step", "cpu ratio")
  lines = [head]
  for r in rows:
    lines.append((
        r["sampler"], str(r["steps"]), str(r["nfe"]), f"{r['compile_s']:.2f}", f"{r['run_s']:.3f}",
        f"{r['ms_per_step']:.3f}", f"{r['ms_per_nfe']:.3f}", f"{r['single_step_ms']:.3f}",
        f"{r['ratio']:.2f}" + _ratio_mark(r["ratio_basis"]),
        "PASS" if r["passed"] else "FAIL", f"{r['cpu_ms_per_step']:.3f}", f"{r['cpu_ratio']:.2f}",
    ))
  widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
  fmt = lambda l: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                            enumerate(zip(l, widths))).rstrip()
  out = [fmt(lines[0]), "  ".join("-" * w for w in widths)]
  out += [fmt(l) for l in lines[1:]]
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=16, help="image height = width")
  p.add_argument("--channels", type=int, default=32, help="hidden conv channels of the model")
  p.add_argument("--steps", type=int, default=1000, help="T and the long-loop step count")
  p.add_argument("--repeats", type=int, default=5, help="timed runs per sampler (median)")
  p.add_argument("--single-calls", type=int, default=200,
                 help="back-to-back calls of the jitted single step per repeat (their mean)")
  p.add_argument("--only", default="", help="comma-separated substrings of sampler names to run")
  p.add_argument("--json", default="", help="write the results to this JSON file")
  args = p.parse_args(argv)

  shape = (args.batch, args.size, args.size, 1)
  env = environment(args, shape)
  print(f"backend={env['backend']} device_kind={env['device_kind']} devices={env['num_devices']} "
        f"jax={env['jax']} jaxlib={env['jaxlib']} cpu_count={env['cpu_count']}")
  print(f"batch={args.batch} shape={shape} model=2x conv3x3 (C={args.channels}), "
        f"{env['model_flops_per_image'] / 1e3:.0f} kFLOP/image; steps={args.steps} "
        f"repeats={args.repeats} single_calls={args.single_calls}")
  print(f"XLA_FLAGS={env['xla_flags']!r} (YNN fusion disabled: {env['ynn_fusion_disabled']})")
  sys.stdout.flush()

  params = init_params(jax.random.PRNGKey(0), args.channels)
  rng = jax.random.PRNGKey(42)
  x = jax.random.normal(jax.random.PRNGKey(7), shape, jnp.float32)
  only = [s for s in args.only.split(",") if s]
  rows, structure = [], []
  for case in build_cases(args.steps, shape):
    if only and not any(s in case["name"] for s in only):
      continue
    if "sigma_solver" in case:
      st = loop_structure(case, params, rng)
      structure.append(st)
      print(f"  {st['sampler']}: jaxpr has {st['scans']} scan(s) (length {st['scan_length']}, "
            f"carry {', '.join(st['carry'])}), {st['whiles']} while, host callbacks: "
            f"{st['callbacks'] or 'none'} ({'PASS' if st['passed'] else 'FAIL'})", flush=True)
    r = run_case(case, params, rng, x, args.repeats, args.single_calls)
    rows.append(r)
    print(f"  {r['sampler']}: {r['ms_per_step']:.3f} ms/step, ratio {r['ratio']:.2f} "
          f"({'PASS' if r['passed'] else 'FAIL'})", flush=True)

  print()
  print(format_table(rows))
  print("ratio = (wall time per step in the compiled loop) / (one jitted single-step call), "
        f"median over repeats; PASS if <= {RATIO_LIMIT}. cpu ms/step, cpu ratio: the same with "
        "process CPU time (all threads; less sensitive to other load on the machine). "
        "* rk45: per model evaluation, vs one integrate_adaptive(max_steps=1) call. "
        "^ sigma solvers of k NFE per step: the loop's last step (to sigma = 0) is 1 NFE, so the "
        "loop counts as NFE / k steps.")
  for r in rows:
    if "reached_end" in r:
      print(f"{r['sampler']}: {r['steps']} steps ({r['rejected']} rejected), {r['nfe']} NFE, "
            f"reached t=eps: {r['reached_end']}")
  for r in rows:
    verdict, cmp = ("PASS", "<=") if r["passed"] else ("FAIL", ">")
    print(f"{verdict}: {r['sampler']}: ratio {r['ratio']:.2f} ({r['ratio_basis']}) "
          f"{cmp} {RATIO_LIMIT}")
  for st in structure:
    print(f"{'PASS' if st['passed'] else 'FAIL'}: {st['sampler']}: {st['scans']} scan, "
          f"{st['whiles']} while, {len(st['callbacks'])} host callbacks in the jaxpr; "
          f"{st['history_arrays']} image-shaped history array(s) in the scan carry")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"env": env, "results": rows, "structure": structure}, f, indent=2)
    print(f"wrote {args.json}")
  return 0 if all(r["passed"] for r in rows + structure) else 1


if __name__ == "__main__":
  sys.exit(main())
