"""The sampler record: everything the rest of the package knows about a sampler.

Each sampler is one `Sampler` in `SAMPLERS`: its name, an options dataclass
(defaults and validation), the domain it runs on (`processes.DOMAINS`; a tuple
lists several in order of preference: DDIM runs on a discrete schedule's integer
steps, and in sigma space on every other process),
`nfe` / `steps` of its options, whether it can return a trajectory, and
``run(denoiser, process, rng, shape, options, *, x_init=None,
return_trajectory=False)``. Config checks (`experiment.validate_config`),
``config.sample``'s keys (`config_defaults`), `--mode eval` specs
(`eval.entries`) and the sample function (`Experiment.sample_fn`) all read this record;
nothing else lists samplers.

An options field named like a ``config.sample`` key takes its value from there
(`options_from`), so the fields of all records together are the sampler keys
of ``config.sample``; a field two samplers share (``num_steps``, ``eps``,
``clip_denoised``) must have one type and one default.

Adding a sampler: write its function (any module), its options dataclass and
``register(Sampler(...))`` (see `SAMPLERS` below, or docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from diffusion.core import checks, grids, ode, processes, schedules
from diffusion.core.samplers import discrete, flow, sde, sigma
from diffusion.core.samplers.pc_rules import CORRECTORS, PREDICTORS


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A registry entry (module docstring). ``nfe``/``steps``: ``(options, process) -> int``
  (``nfe`` None when adaptive); ``traceable``: ``options -> bool``."""

  name: str
  options: type
  domain: str | tuple[str, ...]
  run: Callable[..., Any]
  nfe: Callable[[Any, Any], int | None]
  steps: Callable[[Any, Any], int] = lambda o, p: int(o.num_steps)
  traceable: Callable[[Any], bool] = lambda o: True
  doc: str = ""

  @property
  def domains(self) -> tuple[str, ...]:
    """The domains it runs on, in order of preference."""
    return (self.domain,) if isinstance(self.domain, str) else tuple(self.domain)

  def make_options(self, **values):
    """The options with `values` (field names) over the defaults; ValueError names bad ones."""
    fields = field_types(self.options)
    unknown = sorted(set(values) - set(fields))
    if unknown:
      raise ValueError(f"sampler {self.name!r} has no option {', '.join(unknown)}; valid: "
                       f"{', '.join(fields) or 'none'}")
    return self.options(**values)


def field_types(options_cls) -> dict[str, type]:
  """``{field: type}`` of an options dataclass, in declaration order."""
  hints = typing.get_type_hints(options_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(options_cls)}


def _positive(value, name, lower=1):
  if isinstance(value, bool) or not isinstance(value, int) or value < lower:
    raise ValueError(f"{name}={value!r} must be an int >= {lower}")


def _final_time(eps):
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps={eps} (the final time) must lie in (0, 1)")


def _clip(options):
  return 1.0 if options.clip_denoised else None


def _sigma_grid(options):
  checks.setting(options.grid, grids.SIGMA_GRIDS, "grid")
  if not options.rho > 0:
    raise ValueError(f"rho={options.rho} must be > 0")
  _final_time(options.eps)


# --------------------------------------------------------------------------
# Options. Defaults are the config's (configs/default.py reads them here).
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DDPMOptions:
  """variance: "beta" | "beta_tilde"; clip_denoised: clip x0_hat to [-1, 1] each step."""
  variance: str = "beta"
  clip_denoised: bool = True

  def __post_init__(self):
    checks.setting(self.variance, schedules.VARIANCES, "variance")


@dataclasses.dataclass(frozen=True)
class DDIMOptions:
  """num_steps: sampler steps (uniform skip); eta: noise, 0 deterministic .. 1 DDPM-like.
  A continuous-time model runs DDIM in sigma space (`sigma.euler`) on the noise
  levels of ``grid`` ("karras" with ``rho``, "log_snr", or "time": the DDIM
  paper's uniform spacing in t, down to ``eps``); clip_denoised applies on
  integer steps only."""
  num_steps: int = 1000
  eta: float = 0.0
  clip_denoised: bool = True
  grid: str = "karras"
  rho: float = 7.0
  eps: float = 1e-3

  def __post_init__(self):
    _positive(self.num_steps, "num_steps")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"eta={self.eta} must lie in [0, 1]")
    _sigma_grid(self)


@dataclasses.dataclass(frozen=True)
class SigmaOptions:
  """num_steps: steps (N + 1 noise levels, the last 0); grid: "karras" (rho) | "log_snr" |
  "time" (the process's own uniform times down to eps; a discrete model's DDIM skip)."""
  num_steps: int = 1000
  grid: str = "karras"
  rho: float = 7.0
  eps: float = 1e-3

  def __post_init__(self):
    _positive(self.num_steps, "num_steps")
    _sigma_grid(self)


@dataclasses.dataclass(frozen=True)
class EDMStochasticOptions(SigmaOptions):
  """EDM Alg. 2: s_churn (total churn over the steps), s_tmin .. s_tmax (the sigmas it
  applies to), s_noise (noise inflation). Defaults: EDM's ImageNet-64 setting (Karras et
  al. 2022, Table 5: 40, 0.05, 50, 1.003); s_churn=0 is the Heun sampler."""
  s_churn: float = 40.0
  s_tmin: float = 0.05
  s_tmax: float = 50.0
  s_noise: float = 1.003

  def __post_init__(self):
    super().__post_init__()
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 0")


@dataclasses.dataclass(frozen=True)
class DPMSolverOptions(SigmaOptions):
  """solver_order: DPM-Solver's order, 1 (= DDIM), 2 or 3 (singlestep)."""
  solver_order: int = 3

  def __post_init__(self):
    super().__post_init__()
    checks.setting(self.solver_order, sigma.DPM_ORDERS, "solver_order")


@dataclasses.dataclass(frozen=True)
class EulerMaruyamaOptions:
  """num_steps: steps from t = 1 to eps; eps: the final time."""
  num_steps: int = 1000
  eps: float = 1e-3

  def __post_init__(self):
    _positive(self.num_steps, "num_steps")
    _final_time(self.eps)


@dataclasses.dataclass(frozen=True)
class PredictorCorrectorOptions:
  """predictor / corrector: rules of `pc_rules` ("none" skips one); snr: the Langevin
  target signal-to-noise ratio; corrector_steps: corrector updates per step."""
  num_steps: int = 1000
  predictor: str = "reverse_diffusion"
  corrector: str = "langevin"
  snr: float = 0.16
  corrector_steps: int = 1
  eps: float = 1e-3

  def __post_init__(self):
    _positive(self.num_steps, "num_steps")
    checks.setting(self.predictor, tuple(PREDICTORS), "predictor")
    checks.setting(self.corrector, tuple(CORRECTORS), "corrector")
    _positive(self.corrector_steps, "corrector_steps")
    _final_time(self.eps)
    if self.predictor == "none" and self.corrector == "none":
      raise ValueError("predictor and corrector cannot both be 'none'")


@dataclasses.dataclass(frozen=True)
class ProbabilityFlowOptions:
  """ode_method: "euler" | "heun" (fixed steps) | "rk45" (adaptive; num_steps is then
  its step limit and there is no trajectory)."""
  num_steps: int = 1000
  ode_method: str = "heun"
  eps: float = 1e-3

  def __post_init__(self):
    _positive(self.num_steps, "num_steps")
    checks.setting(self.ode_method, ode.METHODS, "ode_method")
    _final_time(self.eps)


# --------------------------------------------------------------------------
# Runs: (denoiser, process, rng, shape, options, *, x_init, return_trajectory; edits
# that start part-way add t_start= (SDE / ODE samplers) or sigmas= (sigma space)).
# --------------------------------------------------------------------------


def _run_ddpm(den, process, rng, shape, o, **kw):
  return discrete.ddpm(den.eps_fn(), process, rng, shape, variance=o.variance,
                       clip_denoised=_clip(o), **kw)


def _run_ddim(den, process, rng, shape, o, **kw):
  if not processes.is_discrete(process):
    sigmas = kw.pop("sigmas", None)
    sigmas = _grid(process, o) if sigmas is None else sigmas
    return sigma.euler(den.sigma_fn(), sigmas, rng, shape, eta=o.eta, **kw)
  return discrete.ddim(den.eps_fn(), process, rng, shape, num_steps=o.num_steps, eta=o.eta,
                       clip_denoised=_clip(o), **kw)


def _grid(process, o):
  return processes.sigma_grid(process, o.grid, o.num_steps, eps=o.eps, rho=o.rho)


def _sigma_run(fn, **fixed):
  """A run of the sigma-space solver `fn` on the grid of its options."""
  def run(den, process, rng, shape, o, **kw):
    extra = dict(fixed)
    if isinstance(o, EDMStochasticOptions):
      extra.update(s_churn=o.s_churn, s_tmin=o.s_tmin, s_tmax=o.s_tmax, s_noise=o.s_noise)
    if isinstance(o, DPMSolverOptions):
      extra.update(order=o.solver_order)
    sigmas = kw.pop("sigmas", None)  # An edit's own grid (`core.edit.start_at_level`).
    sigmas = _grid(process, o) if sigmas is None else sigmas
    return fn(den.sigma_fn(), sigmas, rng, shape, **extra, **kw)
  return run


def _sigma_nfe(name, order=1):
  return lambda o, p: sigma.nfe(name, o.num_steps, order=getattr(o, "solver_order", order))


def _run_em(den, process, rng, shape, o, **kw):
  return sde.euler_maruyama(den.score_fn(process), process, rng, shape, num_steps=o.num_steps,
                            eps=o.eps, **kw)


def _run_pc(den, process, rng, shape, o, **kw):
  return sde.predictor_corrector(
      den.score_fn(process), process, rng, shape, num_steps=o.num_steps, predictor=o.predictor,
      corrector=o.corrector, snr=o.snr, corrector_steps=o.corrector_steps, eps=o.eps, **kw)


def _run_flow(den, process, rng, shape, o, **kw):
  return flow.probability_flow(den.score_fn(process), process, rng, shape,
                               num_steps=o.num_steps, method=o.ode_method, eps=o.eps, **kw)


def _pc_nfe(o, process):
  return o.num_steps * ((o.predictor != "none") + (o.corrector != "none") * o.corrector_steps)


def _flow_nfe(o, process):
  return None if o.ode_method == "rk45" else o.num_steps * ode.FIXED_STEP[o.ode_method][1]


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
  """Adds `sampler` to `SAMPLERS` (its name must be new; its options' shared fields
  must agree in type and default with the other samplers'). Returns it."""
  if sampler.name in SAMPLERS:
    raise ValueError(f"a sampler named {sampler.name!r} is registered already")
  if not dataclasses.is_dataclass(sampler.options):
    raise ValueError(f"sampler {sampler.name!r}: options must be a dataclass")
  for domain in sampler.domains:
    if domain not in processes.DOMAINS:
      raise ValueError(f"sampler {sampler.name!r}: domain {domain!r} is not one of "
                       f"{', '.join(processes.DOMAINS)}")
  known = config_defaults()
  for key, value in config_defaults([sampler]).items():
    if key in known and (type(known[key]), known[key]) != (type(value), value):
      raise ValueError(f"sampler {sampler.name!r}: option {key}={value!r} disagrees with the "
                       f"shared default {known[key]!r} of config.sample.{key}")
  SAMPLERS[sampler.name] = sampler
  return sampler


def get(name: str) -> Sampler:
  """The record named `name`; the error lists the valid names."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
  return SAMPLERS[name]


def names(domain: str | None = None) -> tuple[str, ...]:
  """Registered sampler names (of `domain` only, if given)."""
  return tuple(n for n, s in SAMPLERS.items() if domain is None or domain in s.domains)


def config_defaults(records=None) -> dict[str, Any]:
  """``{option: default}`` over the options of `records` (default: all registered):
  the sampler keys of ``config.sample``."""
  out = {}
  for record in SAMPLERS.values() if records is None else records:
    for f in dataclasses.fields(record.options):
      out.setdefault(f.name, f.default)
  return out


def options_from(record: Sampler, section) -> Any:
  """`record`'s options with every field read from `section` (``config.sample``)
  where it has that key, else the default."""
  return record.make_options(**{k: section[k] for k in field_types(record.options)
                                if k in section})


for _record in (
    Sampler("ddpm", DDPMOptions, "discrete", _run_ddpm, nfe=lambda o, p: p.num_steps,
            steps=lambda o, p: p.num_steps, doc="ancestral sampling over all T steps"),
    Sampler("ddim", DDIMOptions, ("discrete", "sigma"), _run_ddim, nfe=lambda o, p: o.num_steps,
            doc="DDIM on the uniform-skip subsequence"),
    Sampler("euler_maruyama", EulerMaruyamaOptions, "continuous", _run_em,
            nfe=lambda o, p: o.num_steps, doc="Euler-Maruyama on the reverse SDE"),
    Sampler("predictor_corrector", PredictorCorrectorOptions, "continuous", _run_pc,
            nfe=_pc_nfe, doc="predictor-corrector (Song et al. 2021)"),
    Sampler("probability_flow", ProbabilityFlowOptions, "continuous", _run_flow, nfe=_flow_nfe,
            traceable=lambda o: o.ode_method != "rk45", doc="the probability-flow ODE"),
    Sampler("edm_heun", SigmaOptions, "sigma", _sigma_run(sigma.heun), nfe=_sigma_nfe("heun"),
            doc="EDM's deterministic Heun sampler (Karras et al. 2022, Alg. 1)"),
    Sampler("edm_stochastic", EDMStochasticOptions, "sigma", _sigma_run(sigma.edm_stochastic),
            nfe=_sigma_nfe("edm_stochastic"),
            doc="EDM's stochastic sampler (Karras et al. 2022, Alg. 2)"),
    Sampler("dpm_solver", DPMSolverOptions, "sigma", _sigma_run(sigma.dpm_solver),
            nfe=_sigma_nfe("dpm_solver"), doc="DPM-Solver-1/2/3, singlestep (Lu et al. 2022a)"),
    Sampler("dpmpp_2m", SigmaOptions, "sigma", _sigma_run(sigma.dpmpp_2m),
            nfe=_sigma_nfe("dpmpp_2m"), doc="DPM-Solver++(2M), multistep (Lu et al. 2022b)"),
    Sampler("dpmpp_2s", SigmaOptions, "sigma", _sigma_run(sigma.dpmpp_singlestep, order=2),
            nfe=_sigma_nfe("dpmpp_singlestep", 2), doc="DPM-Solver++(2S), singlestep"),
    Sampler("dpmpp_3s", SigmaOptions, "sigma", _sigma_run(sigma.dpmpp_singlestep, order=3),
            nfe=_sigma_nfe("dpmpp_singlestep", 3), doc="DPM-Solver++(3S), singlestep"),
):
  register(_record)
