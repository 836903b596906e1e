"""Samplers: pure functions of a model callable, a schedule or SDE, and a key.

Contract (DESIGN.md): ``eps_fn(x [B, ...], t int32 [B]) -> eps`` for the
discrete samplers, ``score_fn(x, t float32 [B]) -> score`` for the
continuous ones; any callable works (tests pass closed-form scores;
`diffusion.core.denoiser.Denoiser` makes both from a network). Every sampler

- runs its loop in ``lax.scan`` and compiles under ``jax.jit`` (mark
  ``shape``, ``num_steps`` and the method names static);
- takes ``x_init=`` (an array of ``shape``) to start from a given ``x_T``;
  otherwise it draws ``x_T`` from the first half of ``rng``;
- derives the step noise as ``fold_in(loop_key, step)``, so a step's noise
  does not depend on how many steps came before it;
- with ``return_trajectory=True`` returns ``(x, traj)`` where ``traj`` has
  ``"t"`` ``[S]``, ``"x"`` ``[S, ...]`` (the state after each step) and
  ``"x0"`` ``[S, ...]`` (the denoised estimate at each step).

Families: `discrete` (ddpm, ddim, ddim_invert), `sde` (euler_maruyama,
predictor_corrector with the rules of `pc_rules`), `flow` (probability_flow),
`sigma` (sigma space, ``denoise(x, sigma [B]) -> x0`` and a descending sigma grid
ending at 0, the EDM / k-diffusion convention: sigma_euler = DDIM, edm_heun,
edm_stochastic, dpm_solver, dpmpp_2m, dpmpp_singlestep).
Time grids live in `diffusion.core.grids`. The sampler records (options,
domain, NFE, run) that config checks, eval specs and the sample function read
are in `registry`: `SAMPLERS`, `get`, `register`.
"""
from diffusion.core.grids import ddim_timesteps
from diffusion.core.samplers.discrete import ddim, ddim_invert, ddpm
from diffusion.core.samplers.flow import probability_flow, probability_flow_adaptive
from diffusion.core.samplers.pc_rules import CORRECTORS, PREDICTORS
from diffusion.core.samplers.registry import SAMPLERS, Sampler, get, register
from diffusion.core.samplers.sde import euler_maruyama, predictor_corrector
from diffusion.core.samplers.sigma import (dpm_solver, dpmpp_2m, dpmpp_singlestep,
                                           edm_stochastic)
from diffusion.core.samplers.sigma import euler as sigma_euler
from diffusion.core.samplers.sigma import heun as edm_heun

__all__ = ["ddpm", "ddim", "ddim_invert", "ddim_timesteps", "euler_maruyama",
           "predictor_corrector", "probability_flow", "probability_flow_adaptive", "PREDICTORS",
           "CORRECTORS", "SAMPLERS", "Sampler", "get", "register", "sigma_euler", "edm_heun",
           "edm_stochastic", "dpm_solver", "dpmpp_2m", "dpmpp_singlestep"]
