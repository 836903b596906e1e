"""Tests of diffusion.train.step, diffusion.dist and diffusion.train.state.

Multi-device numbers come from tests/_parallel_worker.py, run once in a
subprocess with 4 fake CPU devices (the flag must precede JAX's start). The
rest runs in this process on one device.
"""
import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diffusion import models
from diffusion.dist import compile as compile_lib
from diffusion.dist import placement
from diffusion.train import state as ts
from diffusion.train import step as train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "_parallel_worker", ROOT / "tests" / "_parallel_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def optim_config(**optim):
  config = ml_collections.ConfigDict()
  config.optim = dict(optimizer="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                      weight_decay=0.0, warmup_steps=0, schedule="constant",
                      decay_steps=0, grad_clip=0.0)
  config.optim.update(optim)
  config.ema = dict(decay=0.9999)
  return config


# --------------------------------------------------------------------------
# 4 fake devices (subprocess).
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
  out = tmp_path_factory.mktemp("parallel") / "out.npz"
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_parallel_worker.py"),
                         str(out)], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as data:
    return {k: data[k] for k in data.files}


def test_pmap_equals_jit_shard_map(multi):
  # Both compile the same per-device program and the same 4-way pmean, so the
  # only possible difference is the all-reduce's summation order: a few float32
  # ulps (~1e-7 relative) of O(1) grads; Adam's direction m/sqrt(v) is
  # scale-free, so after 3 steps of lr 1e-2 the params differ by << 1e-6.
  for q in ("params", "ema"):
    np.testing.assert_allclose(multi[f"pmap_{q}"], multi[f"jit_{q}"], rtol=0, atol=1e-6)
  assert int(multi["pmap_step"]) == int(multi["jit_step"]) == worker.NUM_STEPS
  # Params did move (|init - final| is O(lr * steps) = O(1e-2)), so equality
  # is not the trivial one of an untouched state.
  np.testing.assert_allclose(multi["pmap_m_loss"], multi["jit_m_loss"], rtol=1e-6)


def test_four_devices_equal_one_device_on_the_global_batch(multi):
  # The loss is a per-example mean, so mean_d(mean of 2 rows) == mean of 8 rows
  # up to summation order (~1e-7 relative in loss and grads, measured 3e-8 in
  # params). Adam (direction O(1), lr 1e-2) + clipping turn that into ~1e-9
  # absolute per step; 1e-5 leaves room for the grad clip factor and 3 steps.
  for q in ("params", "ema"):
    for mode in ("pmap", "jit"):
      np.testing.assert_allclose(multi[f"{mode}_{q}"], multi[f"one_{q}"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(multi["jit_m_loss"], multi["one_m_loss"], rtol=1e-6)
  np.testing.assert_allclose(multi["jit_m_grad_norm"], multi["one_m_grad_norm"], rtol=1e-5)
  # grad_clip=0.5 < every grad norm here: clipping took part in all 3 steps.
  assert np.all(multi["one_m_grad_norm"] > 0.5)
  # Cosine schedule (no warmup, decay_steps 10): lr_s = 1e-2 * (1 + cos(pi s/10)) / 2.
  lr = [1e-2 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(3)]
  np.testing.assert_allclose(multi["jit_m_lr"], lr, rtol=1e-6)


def test_per_device_rng_is_fold_in_of_step_then_device(multi):
  # "u" is uniform(rng) pmean'd over devices; the expectation is built on the
  # host from fold_in(fold_in(state.rng, step), device). Values in [0, 1], a
  # 4-term mean in float32: |error| <= 4 ulp(1) ~ 5e-7.
  np.testing.assert_allclose(multi["jit_m_u"], multi["u_expected4"], atol=1e-6)
  np.testing.assert_allclose(multi["pmap_m_u"], multi["u_expected4"], atol=1e-6)
  np.testing.assert_allclose(multi["one_m_u"], multi["u_expected1"], atol=1e-6)
  # Four devices really drew different numbers (else the mean would equal d=0).
  assert np.all(np.abs(multi["jit_m_u"] - multi["u_expected1"]) > 1e-3)


def test_steps_per_call_equals_single_calls(multi):
  # lax.scan runs the very same step body k times; measured bit-identical,
  # 1e-6 allows the compiler to fuse differently inside the loop.
  for mode in ("pmap", "jit"):
    for q in ("params", "ema"):
      np.testing.assert_allclose(multi[f"{mode}_k_{q}"], multi[f"{mode}_{q}"], rtol=0, atol=1e-6)
    assert int(multi[f"{mode}_k_step"]) == worker.NUM_STEPS
    # Metrics come back per step: shape [k].
    assert multi[f"{mode}_k_m_loss"].shape == (worker.NUM_STEPS,)
    np.testing.assert_allclose(multi[f"{mode}_k_m_loss"], multi[f"{mode}_m_loss"], rtol=1e-6)


def test_nan_on_one_device_skips_the_update_everywhere(multi):
  for mode in ("pmap", "jit"):
    np.testing.assert_array_equal(multi[f"nan_{mode}_finite"], [1.0, 0.0])
    # jnp.where keeps the previous buffers bit for bit.
    np.testing.assert_array_equal(multi[f"nan_{mode}_params"],
                                  multi[f"nan_{mode}_params_after_step0"])
    np.testing.assert_array_equal(multi[f"nan_{mode}_opt"],
                                  multi[f"nan_{mode}_opt_after_step0"])
    assert np.all(np.isfinite(multi[f"nan_{mode}_params"]))


def test_indivisible_batch_raises_naming_both_numbers(multi):
  for key in ("err_shard_pmap", "err_shard_jit", "err_call_jit"):
    msg = str(multi[key])
    assert "batch size 6" in msg and "devices 4" in msg, msg


# --------------------------------------------------------------------------
# One device, in process.
# --------------------------------------------------------------------------


def _nan_batch(b):
  b = dict(b)
  b["x"] = b["x"].copy()
  b["x"][0, 0] = np.nan
  return b


def _run_steps(step_fn, state, data, place=lambda b: b):
  """`step_fn` over `data` from `state`: (final state, metrics stacked ``[steps]``)."""
  metrics = []
  for b in data:
    state, m = step_fn(state, place(b))
    metrics.append(jax.device_get(m))
  return state, {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}


@pytest.fixture(scope="module")
def plain_runs():
  """The step with axis_name=None (no mesh, no pmap / shard_map, host numpy
  batches, a state on no particular device; device index 0 as on a 1-device
  mesh), called eagerly and under jax.jit: run once, compared with both modes."""
  config = worker.get_config()
  tx = ts.make_optimizer(config)
  plain = train_step.make_train_step(worker.loss_fn, tx, config, axis_name=None)
  eager = _run_steps(plain, worker.init_state(tx), worker.batches())
  jitted = _run_steps(jax.jit(plain), worker.init_state(tx), worker.batches())
  return config, tx, eager, jitted


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_step_without_axis_is_a_plain_function_equal_to_the_compiled_step(mode, plain_runs):
  config, tx, (eager, eager_m), (jitted, jitted_m) = plain_runs
  compiled = compile_lib.compile_step(train_step.make_train_step(worker.loss_fn, tx, config),
                                      mode, placement.make_mesh(jax.devices()[:1]), donate=False)
  want, want_m = _run_steps(compiled, compiled.replicate(worker.init_state(tx)),
                            worker.batches(), compiled.shard_batch)
  want = compiled.unreplicate(want)
  # Under jax.jit it is the compiled step's very program (a pmean over one
  # device is the identity, axis_index is 0): bit-identical.
  for field in ("params", "opt_state", "ema_params"):
    np.testing.assert_array_equal(worker.flat(getattr(jitted, field)),
                                  worker.flat(getattr(want, field)))
  for key in want_m:
    np.testing.assert_array_equal(jitted_m[key], want_m[key])
  # Called eagerly, op by op, XLA does not fuse, so float32 sums (the loss's
  # mean, the grads' sums over 8 rows, the global norm) may round in another
  # order: a few ulp, ~1e-7 relative, of O(1) losses and grads (measured: one
  # ulp of grad_norm at step 3, 3e-8 in params). AdamW's direction m/sqrt(v)
  # is scale-free, so that moves each update by ~1e-7 * lr (1e-2); rounding
  # p - lr * d can then land one ulp of |p| (|p| < 2: ulp <= 1.2e-7) away per
  # step, and Adam's moments and the EMA inherit the same few ulp of O(1)
  # values: over 3 steps < 3 * (1.2e-7 + 1e-9) < 1e-6.
  for field in ("params", "opt_state", "ema_params"):
    np.testing.assert_allclose(worker.flat(getattr(eager, field)),
                               worker.flat(getattr(want, field)), rtol=0, atol=1e-6)
  assert int(eager.step) == int(want.step) == worker.NUM_STEPS
  # The key is fold_in(fold_in(rng, step), 0) in both: "u" (exact bit
  # operations on the key, no rounding) is equal bit for bit.
  np.testing.assert_array_equal(eager_m["u"], want_m["u"])
  for key in ("loss", "grad_norm", "lr", "finite"):
    np.testing.assert_allclose(eager_m[key], want_m[key], rtol=1e-6)
  assert not np.allclose(worker.flat(eager.params), worker.flat(worker.init_state(tx).params),
                         atol=1e-3)  # the params did move: not an untouched state


def test_non_finite_step_is_skipped_and_reported():
  config = worker.get_config()
  config.unlock()
  config.ema = dict(decay=0.5, start_step=1)  # step 0: copy; later: 0.5.
  tx = ts.make_optimizer(config)
  mesh = placement.make_mesh(jax.devices()[:1])
  step = compile_lib.compile_step(train_step.make_train_step(worker.loss_fn, tx, config),
                                  "jit", mesh, donate=False)
  b0, b1, b2 = worker.batches()
  s0 = step.replicate(worker.init_state(tx))
  s1, m1 = step(s0, step.shard_batch(b0))
  s2, m2 = step(s1, step.shard_batch(_nan_batch(b1)))
  s3, m3 = step(s2, step.shard_batch(b2))
  assert float(m1["finite"]) == 1.0 and float(m3["finite"]) == 1.0
  assert float(m2["finite"]) == 0.0 and np.isnan(float(m2["loss"]))
  for field in ("params", "opt_state", "ema_params"):
    np.testing.assert_array_equal(worker.flat(getattr(s2, field)), worker.flat(getattr(s1, field)))
  assert int(s2.step) == 2 and int(s3.step) == 3
  train_step.check_finite(m1, step=0)  # finite: no error
  with pytest.raises(train_step.NonFiniteError, match=r"loss.* at step 1\b") as err:
    train_step.check_finite(m2, step=1)
  assert err.value.step == 1 and err.value.metric == "loss"
  # EMA through the step: decay(0) = 0 copies params; decay(2) = 0.5, and the
  # skipped step 1 left it alone. 0.5-scaling is exact in float32, the sum
  # rounds once: rtol 1e-6.
  np.testing.assert_array_equal(worker.flat(s1.ema_params), worker.flat(s1.params))
  expected = 0.5 * worker.flat(s1.params) + 0.5 * worker.flat(s3.params)
  np.testing.assert_allclose(worker.flat(s3.ema_params), expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(worker.flat(s3.params), worker.flat(s1.params), atol=1e-4)


def test_non_finite_inside_steps_per_call_names_the_step():
  config = worker.get_config()
  tx = ts.make_optimizer(config)
  mesh = placement.make_mesh(jax.devices()[:1])
  step = compile_lib.compile_step(train_step.make_train_step(worker.loss_fn, tx, config),
                                  "pmap", mesh, steps_per_call=3)
  b0, b1, b2 = worker.batches()
  stacked = jax.tree.map(lambda *xs: np.stack(xs), b0, _nan_batch(b1), b2)
  state, metrics = step(step.replicate(worker.init_state(tx)), step.shard_batch(stacked))
  np.testing.assert_array_equal(metrics["finite"], [1.0, 0.0, 1.0])
  with pytest.raises(train_step.NonFiniteError, match=r"at step 11\b") as err:
    train_step.check_finite(metrics, step=10)  # the call started at step 10
  assert err.value.step == 11
  assert np.all(np.isfinite(worker.flat(step.unreplicate(state).params)))


def test_check_finite_names_grad_norm():
  metrics = {"finite": np.array([1.0, 1.0, 0.0]), "loss": np.array([1.0, 2.0, 3.0]),
             "grad_norm": np.array([1.0, 2.0, np.inf])}
  with pytest.raises(train_step.NonFiniteError, match=r"grad_norm at step 7\b") as err:
    train_step.check_finite(metrics, step=5)
  assert (err.value.step, err.value.metric) == (7, "grad_norm")


def test_compute_dtype():
  assert models.compute_dtype("bfloat16") == jnp.bfloat16
  assert models.compute_dtype("float32") == jnp.float32
  with pytest.raises(ValueError, match="float32, bfloat16"):
    models.compute_dtype("fp16")


def test_bad_mode_raises():
  with pytest.raises(ValueError, match="pmap, jit"):
    compile_lib.compile_step(lambda s, b: (s, {}), mode="pjit")


# --------------------------------------------------------------------------
# Optimizer, schedule, EMA.
# --------------------------------------------------------------------------


def test_lr_warmup_then_constant():
  lr = ts.lr_schedule(optim_config(lr=1e-3, warmup_steps=10))
  # Float32 arithmetic on O(1e-3) values: rtol 1e-6 ~ 8 ulp.
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 1000)],
                             [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_lr_cosine_reaches_its_end():
  lr = ts.lr_schedule(optim_config(lr=1e-3, warmup_steps=10, schedule="cosine",
                                   decay_steps=110, end_lr=1e-5))
  mid = 1e-5 + (1e-3 - 1e-5) * 0.5  # cos(pi/2) = 0 half way (step 60)
  quarter = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4))  # step 35
  np.testing.assert_allclose([float(lr(s)) for s in (0, 10, 35, 60, 110, 500)],
                             [0.0, 1e-3, quarter, mid, 1e-5, 1e-5], rtol=1e-5)


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="adam, adamw"):
    ts.make_optimizer(optim_config(optimizer="sgd"))
  with pytest.raises(ValueError, match="constant, cosine"):
    ts.make_optimizer(optim_config(schedule="linear"))


def _reference_adam(grads, params, lr_fn, clip, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  """float64 numpy: clip by global norm, then Adam (coupled L2) or AdamW."""
  p = np.asarray(params, np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  for t, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    if clip:
      g = g * min(1.0, clip / np.linalg.norm(g))
    if wd and not decoupled:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    direction = (m / (1 - b1 ** (t + 1))) / (np.sqrt(v / (1 - b2 ** (t + 1))) + eps)
    if wd and decoupled:
      direction = direction + wd * p
    p = p - lr_fn(t) * direction
  return p


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_optimizer_matches_clip_adam_reference(optimizer):
  config = optim_config(optimizer=optimizer, lr=0.1, warmup_steps=2, grad_clip=1.0,
                        weight_decay=0.05)
  tx = ts.make_optimizer(config)
  params = jnp.array([1.0, -2.0, 0.5], jnp.float32)
  # Norms 50 (clipped to 1), 0.3 and 0.6 (not clipped) over 4 steps.
  grads = [np.array([30.0, -40.0, 0.0]), np.array([0.1, 0.2, -0.2]),
           np.array([-0.2, 0.4, 0.4]), np.array([0.1, 0.2, -0.2])]
  opt_state = tx.init(params)
  p = params
  for i, g in enumerate(grads):
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, p)
    if i == 0:  # warmup: lr(0) = 0, so the first update is exactly zero.
      np.testing.assert_array_equal(updates, 0.0)
    p = optax.apply_updates(p, updates)
  lr_fn = lambda s: 0.1 * min(1.0, s / 2)
  decoupled = optimizer == "adamw"
  expected = _reference_adam(grads, params, lr_fn, 1.0, 0.05, decoupled)
  # float32 Adam vs float64 reference: ~20 float ops of ~6e-8 relative each
  # on a direction of O(1), times lr <= 0.1, over 3 moving steps: < 1e-6.
  np.testing.assert_allclose(p, expected, rtol=0, atol=2e-6)
  # Clipping mattered: without it the first gradient (norm 50) dominates v.
  unclipped = _reference_adam(grads, params, lr_fn, 0.0, 0.05, decoupled)
  assert np.max(np.abs(unclipped - expected)) > 1e-2


def test_ema_closed_form_for_constant_params():
  d, n = 0.9, 50
  ema0 = {"w": jnp.array([1.0, -3.0, 0.25], jnp.float32)}
  p = {"w": jnp.array([2.0, 5.0, -1.0], jnp.float32)}
  ema = ema0
  for _ in range(n):
    ema = ts.ema_update(ema, p, d)
  expected = d ** n * np.asarray(ema0["w"], np.float64) + (1 - d ** n) * np.asarray(p["w"], np.float64)
  # Each update rounds 2-3 times (~6e-8 relative of |values| <= 5); errors
  # shrink by d per step, so the total stays below ~10 ulp(5) = 5e-6.
  np.testing.assert_allclose(ema["w"], expected, rtol=0, atol=5e-6)
  assert abs(d ** n) > 1e-3  # the ema0 term still matters at n = 50


def test_ema_decay_fixed_and_start_step():
  config = optim_config()
  config.ema = dict(decay=0.9999, start_step=100)
  values = [float(ts.ema_decay(s, config)) for s in (0, 99, 100, 5000)]
  np.testing.assert_allclose(values, [0.0, 0.0, 0.9999, 0.9999], rtol=1e-7)


def test_ema_warmup_formula():
  config = optim_config()
  config.ema = dict(decay=0.9999, warmup=True, inv_gamma=1.0, power=2 / 3)
  got = [float(ts.ema_decay(s, config)) for s in (0, 1, 10, 10**7)]
  # 1 - (1 + s)^(-2/3); at s = 1e7 that is 1 - 2.2e-5 > 0.9999, so capped.
  want = [0.0, 1 - 2 ** (-2 / 3), 1 - 11 ** (-2 / 3), 0.9999]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  config.ema = dict(decay=0.999, warmup=True, inv_gamma=10.0, power=1.0, start_step=5)
  got = [float(ts.ema_decay(s, config)) for s in (0, 5, 15, 35)]
  np.testing.assert_allclose(got, [0.0, 0.0, 0.5, 0.75], rtol=1e-6)


def test_create_copies_params_into_ema():
  tx = optax.adam(1e-3)
  init_fn = lambda r: {"w": jax.random.normal(r, (3, 2))}
  state = ts.create(jax.random.PRNGKey(0), init_fn, tx)
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  np.testing.assert_array_equal(state.ema_params["w"], state.params["w"])
  assert state.ema_params["w"] is not state.params["w"]
  # Same key split as create documents: init gets the first half.
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(state.params["w"], init_fn(init_rng)["w"])
  np.testing.assert_array_equal(state.rng, state_rng)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.params))
  # A pytree: flattens to exactly step, params, ema, opt_state leaves and rng.
  assert len(jax.tree.leaves(state)) == 1 + 1 + 1 + len(jax.tree.leaves(state.opt_state)) + 1
