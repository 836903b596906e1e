"""Bits/dim of a trained model, once per model, in `--mode eval`."""
from __future__ import annotations

import copy

import jax
import numpy as np

from diffusion.core import likelihood, processes, vdm
from diffusion.run import console
from diffusion.data import iterator as data
from diffusion.dist import cluster
from diffusion.dist import placement
from diffusion.eval.rounds import batch_size


def denoiser_bpd(exp, den, x, key, levels: int):
  """Bits/dim ``[B]`` of images `x` under the experiment's denoiser `den` (traceable): a
  discrete model's DDPM bound, a VDM model's ELBO, else the probability-flow ODE's
  (rk45, Hutchinson divergence); the data has `levels` levels. `bits_per_dim` and
  ``--mode edit``'s anomaly score both use it."""
  if processes.is_discrete(exp.process):
    return likelihood.ddpm_vlb(den.eps_fn(), exp.process, x, key, num_bins=levels)["total"]
  if exp.config.diffusion.type == "vdm":
    eps_fn = lambda z, g: den.net(z, g, den.cond)
    return vdm.elbo(x, eps_fn, den.process.gamma_schedule, key, num_bins=levels,
                    num_steps=exp.config.diffusion.elbo_steps)["total"]
  return likelihood.bits_per_dim(den.score_fn(), exp.process, x, key, num_bins=levels,
                                 method="rk45", divergence="hutchinson")


def bits_per_dim(exp, params, rng, mesh=None) -> dict:
  """Mean bits/dim of ``eval.bpd_num`` images of ``eval.bpd_split``.

  A discrete model gets DDPM's variational bound (`likelihood.ddpm_vlb`, total)
  on the K-level data itself (no dequantisation noise; the discretised
  Gaussian decoder of Ho et al.); a continuous model gets
  `likelihood.bits_per_dim` of uniformly dequantised data ``x = 2 (k + u) / K
  - 1`` (Song et al. 2021), Hutchinson divergence, rk45 (an EDM model too, on its
  process); a VDM model gets its own ELBO (`vdm.elbo`, continuous time or its
  ``elbo_steps``, the discretised decoder over the K levels, no dequantisation) with
  the schedule of its `params`. With a `mesh`, each
  batch is a global array split over its devices (each process reads its
  slice) and `params` are replicated on it.
  """
  config = exp.config
  e = config.eval
  discrete = processes.is_discrete(exp.process)
  is_vdm = config.diffusion.type == "vdm"
  dc = copy.deepcopy(config.data)
  dc.split, dc.random_flip, dc.dequantize = e.bpd_split, False, not (discrete or is_vdm)
  dc.batch_size = batch_size(config, e.bpd_num, mesh)
  it = data.create(dc, seed=config.seed + 1, process_index=jax.process_index(),
                   process_count=jax.process_count())
  shard = (lambda b: b) if mesh is None else (lambda b: placement.shard_batch(b, mesh, "jit"))
  levels = it.levels
  cond_keys = ("label", "tokens", "mask")

  @jax.jit
  def batch_bpd(params, x, batch, key):  # params an argument: not baked into the program.
    den = exp.denoiser(params, exp.condition(params, exp.batch_inputs(batch)))
    return denoiser_bpd(exp, den, x, key, levels)

  values, done, c = [], 0, 0
  bar = console.progress(None, "bits/dim", unit="batch", total=-(-e.bpd_num // it.batch_size))
  while done < e.bpd_num:
    bar.update(1)
    batch = shard({k: v for k, v in next(it).items() if k == "image" or k in cond_keys})
    args = (params, batch["image"], {k: v for k, v in batch.items() if k in cond_keys},
            jax.random.fold_in(rng, c))
    if c == 0:  # Compiled ahead; all processes compiled before the first collective.
      compiled = batch_bpd.lower(*args).compile()
      cluster.barrier("eval_bpd")
    values.append(placement.to_host(compiled(*args))[:e.bpd_num - done])
    done, c = done + len(values[-1]), c + 1
  bar.close()
  values = np.concatenate(values)
  if discrete:
    name, method = "ddpm_vlb", ("ddpm_vlb: DDPM variational bound (total), discretised "
                                f"Gaussian decoder on the {levels}-level data, no "
                                "dequantisation noise")
  elif is_vdm:
    name, method = "vdm_elbo", ("vdm_elbo: the VDM bound (prior + reconstruction + diffusion, "
                                f"{'continuous time' if not config.diffusion.elbo_steps else str(config.diffusion.elbo_steps) + ' steps'}), "
                                f"discretised decoder over the {levels} levels, one draw of "
                                "t and noise per image")
  else:
    name, method = "probability_flow_ode", (
        "probability_flow: bits_per_dim of uniformly dequantised data x = 2 (k + u) / K - 1 "
        f"(K = {levels}), Hutchinson divergence, rk45")
  return {"bits_per_dim": float(np.mean(values)), "std": float(np.std(values)),
          "num_images": int(done), "split": e.bpd_split, "num_bins": int(levels),
          "method": name, "description": method}
