"""`--mode eval`: sample quality per sampler and bits/dim of a trained workdir.

    python -m diffusion.main --config configs/digits_ddpm.py --workdir /tmp/digits --mode eval \
        --config.eval.features=classifier --config.eval.classifier_path=/tmp/clf \
        --config.eval.specs="('ddpm', 'ddim:steps=50,eta=0', 'ddim:steps=10,eta=1')"

On the EMA params of ``config.sample.checkpoint_step`` (None: the latest), for
each entry of ``config.eval.samplers`` and ``config.eval.specs`` (`eval.entries.eval_samplers`;
both empty: the sampler of ``config.sample``) it draws ``eval.num_samples`` images in calls of
``eval.batch_size`` (chunk c with key ``fold_in(fold_in(sample_key,
crc32(spec)), c)``: deterministic given the seed and the spec; the last chunk
padded and cut), clips them to [-1, 1] and extracts features and logits
(``eval.features``: the project's classifier or FID Inception). It reports

- FID (streaming `metrics.FeatureStats` against the reference statistics);
- KID x 1e3 and precision/recall on the first ``eval.kept_features`` sample
  and reference feature vectors (only these are held in memory; precision /
  recall needs ``O(n^2)`` memory);
- Inception Score of the logits (all N logits are kept, float32);
- ``time_s``: wall time of the N samples' sampler calls, each followed by
  ``block_until_ready``, with the sampler compiled ahead (``compile_s``
  separately); feature extraction is not timed; NFE per sample (None for the
  adaptive rk45 solver).

Reference statistics come from every image of ``eval.reference_split`` (or its
first ``eval.reference_num`` images), not dequantised, cached in
``eval.reference_stats`` (default ``workdir/eval/reference_<features>_<split>.npz``)
with the first ``kept_features`` feature vectors; the default ones are shared by
every workdir of the dataset (``$DIFFUSION_DATA/reference/``,
`features.shared_reference_path`), so the runs of a study compute them once. Bits/dim (``eval.bpd``) is
computed once per model on ``eval.bpd_num`` images of ``eval.bpd_split``:
a discrete model gets DDPM's variational bound (`likelihood.ddpm_vlb`, total)
on the K-level data itself, no dequantisation noise, the discretised Gaussian
decoder of Ho et al.; a continuous model gets `likelihood.bits_per_dim` of
uniformly dequantised data ``x = 2 (k + u) / K - 1`` (Song et al. 2021),
Hutchinson divergence, rk45, plus ``log2(K / 2)``. K is the dataset's number
of pixel levels (256 for 8-bit images, 17 for digits).

Every process runs this (`launch.sh multiprocess`, a TPU pod): each sampler
call is one global batch split over all devices of all processes (so
``eval.batch_size`` must divide by the device count), each process extracts
the features of its rows, and the rows are gathered in order; the reference
and bits/dim batches are split likewise. Every process thus holds the same
statistics as one process would; process 0 writes the files.

Every round is saved at once to ``workdir/eval/rounds/<spec>.json`` (and the
sample statistics to ``<spec>_stats.npz``); a re-run skips rounds whose json
matches the checkpoint step, N and features, so a killed eval resumes. Then
``workdir/eval/results.json`` and ``results.md`` are (re)written, and the
numbers logged to wandb when ``config.wandb.mode`` is on.
"""
from __future__ import annotations

import jax

from diffusion import experiment
from diffusion.dist import placement
from diffusion.eval import cache, features, report, rounds
from diffusion.eval.bpd import bits_per_dim
from diffusion.core import checks
from diffusion.run import checkpoint, console, lock, resume
from diffusion.run.workdir import Workdir, save_npz
from diffusion.eval.entries import eval_samplers, spec_filename


def check(config):
  """``(entries, mesh)``; ValueError naming the key for every bad eval setting,
  before any long compute. (Each key's range and choices are checked with the
  whole config, by `experiment.build`: `experiment.RANGES`, `CHOICES`.)"""
  e = config.eval
  entries = eval_samplers(config)
  mesh = placement.make_mesh()  # Every device of every process shares each call.
  if e.batch_size % mesh.devices.size:
    raise ValueError(f"config.eval.batch_size={e.batch_size} is not divisible by the "
                     f"{mesh.devices.size} devices that share every sampler call")
  if config.data.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={config.data.batch_size} (the reference "
                     f"statistics' read batch) is not divisible by the "
                     f"{jax.process_count()} processes")
  return entries, mesh


def evaluate(config, workdir: str) -> dict:
  """``--mode eval`` (module doc). Returns the results dict written to results.json.

  Linear: check everything, load the extractor, restore the EMA params, then
  per round (the data row first, if asked) skip it if its file says it is done
  (`eval.cache`), else sample and score it (`eval.rounds`); then bits/dim
  (`eval.bpd`) and the report (`eval.report`). Kept as one linear driver (~60
  lines) so the order of the work reads top to bottom.
  """
  e = config.eval
  with checks.config_errors():
    entries, mesh = check(config)
    exp = experiment.build(config)  # Every key's range, before any long compute.
    features.resolve_defaults(config)  # May train the project's classifier once (cached).
    extract = features.make_extractor(config.eval)
    resume.check_config(config, workdir, write=False, mode="eval")
    exp = experiment.with_trained_text(exp, workdir)
    if e.bpd and experiment.latent_model(config):
      raise checks.ConfigError("config.eval.bpd=True: the bits/dim of a latent model would be of "
                               "its latents, not of the images; set config.eval.bpd=False")
    if e.bpd and experiment.text_conditional(config):
      raise checks.ConfigError("config.eval.bpd=True: bits/dim of text-conditional models is not "
                               "built yet; set config.eval.bpd=False")
  held = lock.hold(workdir, "eval", echo=console.echo)
  try:
    return _evaluate(config, workdir, exp, entries, mesh, extract)
  finally:
    if held is not None:
      held.release(remove_empty_workdir=True)


def _evaluate(config, workdir, exp, entries, mesh, extract) -> dict:
  e = config.eval
  with checkpoint.Checkpointer(Workdir(workdir).checkpoints_dir, None) as ckpt:
    params, step = experiment.restore_ema_params(exp, ckpt, config.sample.checkpoint_step, mesh,
                                                 warn=console.echo)
  wd = Workdir(workdir)
  wd.rounds_dir.mkdir(parents=True, exist_ok=True)
  ident = {"step": step, "num_samples": e.num_samples, "features": features.extractor_id(e),
           "quantize": bool(e.quantize)}

  ref, done_rounds = None, []
  todo = ([f"data:{e.baseline_split}"] if e.baseline_split else []) + entries
  for i, entry in enumerate(todo):
    name = entry if isinstance(entry, str) else entry.name
    path = wd.round_file(spec_filename(name))
    drawn = ({"settings": {"split": e.baseline_split}} if isinstance(entry, str)
             else {"settings": rounds.settings(entry.config.sample)})
    row = cache.load_done(path, {**ident, **drawn})
    if row is not None:
      console.echo(f"eval: skipping {name} (done: {path})")
      done_rounds.append(row)
      continue
    if path.exists():
      console.echo(f"eval: recomputing {name}: {path} is of another step, N, extractor or "
                   "sampler settings")
    if ref is None:
      ref = rounds.Reference(extract, *features.reference_stats(config, workdir, extract))
    of = f"(round {i + 1} of {len(todo)})"
    if isinstance(entry, str):
      console.echo(f"eval: scoring {e.num_samples} {e.baseline_split} images (the data row) {of}")
      row, stats = rounds.data_round(config, ref, mesh)
    else:
      console.echo(f"eval: sampling {e.num_samples} images with {name} {of}")
      row, stats = rounds.sampler_round(exp, entry, params, ref, mesh)
    row.update(ident)
    if jax.process_index() == 0:
      save_npz(wd.round_stats(spec_filename(name)), **stats.to_arrays())
    cache.save(path, row)
    kid = "-" if row["kid"] is None else f"{row['kid']:.5f}"
    console.echo(f"eval: {name}: FID {row['fid']:.4f}, KID {kid}, "
                 f"IS {row['inception_score']:.3f}, {row['time_s']:.2f}s")
    done_rounds.append(row)

  bpd = None
  if e.bpd:
    bpd = cache.load_done(wd.bpd_file, {"step": step, "num_images": e.bpd_num})
    if bpd is None:
      console.echo(f"eval: bits/dim on {e.bpd_num} {e.bpd_split} images")
      bpd = {**bits_per_dim(exp, params, jax.random.fold_in(exp.sample_key, 0x62706400), mesh),
             "step": step}
      cache.save(wd.bpd_file, bpd)
    else:
      console.echo(f"eval: skipping bits/dim (done: {wd.bpd_file})")

  results = {"step": step, "features": e.features, "extractor": features.extractor_id(e),
             "num_samples": e.num_samples, "rounds": done_rounds, "bpd": bpd}
  report.write(config, workdir, results)
  console.echo(f"eval: wrote {wd.results('md')}")
  return results
