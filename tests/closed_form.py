"""Data whose noised marginals are known exactly, so samplers get the exact score.

A Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` perturbed by ``x_t = alpha x0
+ sigma eps`` is again a mixture, ``sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 +
sigma^2) I)``, whose score is the responsibility-weighted sum of the component
scores. A single Gaussian is the one-component case.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.core import schedules


@dataclasses.dataclass(frozen=True)
class Mixture:
  weights: np.ndarray  # [K]
  means: np.ndarray  # [K, D]
  stds: np.ndarray  # [K]

  @property
  def dim(self):
    return self.means.shape[1]

  def score(self, x, alpha, sigma):
    """Exact score of the noised mixture at ``x [B, D]``; ``alpha, sigma [B]``."""
    a, s2 = alpha[:, None, None], sigma[:, None, None] ** 2
    var = a**2 * jnp.asarray(self.stds)[None, :, None] ** 2 + s2  # [B, K, 1]
    diff = x[:, None, :] - a * jnp.asarray(self.means)[None]  # [B, K, D]
    logp = (jnp.log(jnp.asarray(self.weights))[None, :]
            - 0.5 * jnp.sum(diff**2 / var, -1) - 0.5 * self.dim * jnp.log(var[..., 0]))
    resp = jax.nn.softmax(logp, axis=1)[..., None]  # [B, K, 1]
    return jnp.sum(resp * (-diff / var), axis=1)

  def eps_fn(self, sched: schedules.DiscreteSchedule):
    def eps_fn(x, t):
      ab = sched.alpha_bars[t]
      sigma = jnp.sqrt(1.0 - ab)
      return -sigma[:, None] * self.score(x, jnp.sqrt(ab), sigma)
    return eps_fn

  def score_fn(self, sde):
    def score_fn(x, t):
      alpha, sigma = sde.marginal_coeffs(t)
      return self.score(x, alpha, sigma)
    return score_fn

  def denoise(self, x, sigma):
    """Exact ``E[x0 | x0 + sigma z = x]`` (sigma space, ``alpha = 1``) by Tweedie:
    ``x + sigma^2 score``; ``x [B, D]``, ``sigma [B]``."""
    return x + sigma[:, None] ** 2 * self.score(x, jnp.ones_like(sigma), sigma)

  def sample(self, rng, n):
    k_key, x_key = jax.random.split(rng)
    k = jax.random.choice(k_key, len(self.weights), (n,), p=jnp.asarray(self.weights))
    noise = jax.random.normal(x_key, (n, self.dim))
    return jnp.asarray(self.means)[k] + jnp.asarray(self.stds)[k][:, None] * noise


def mixture_sample_errors(x, mix: Mixture, var_allowance=None) -> list[str]:
  """What is wrong with samples ``x [n, D]`` of `mix` ([] if nothing): each weight must
  lie within 3 binomial SE (``sqrt(w (1 - w) / n)``, labels by the nearest mean:
  components >= 1.1 apart with std 0.15 mislabel < 1e-4 of samples), each coordinate's
  mean within 3 SE (``std / sqrt(n)``) and, unless `var_allowance` is None, its variance
  within 3 SE (``sqrt((m4 - var^2) / n)``) plus `var_allowance` (the caller's stated bias)."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  errors = []
  k = np.argmin(((x[:, None] - mix.means[None]) ** 2).sum(-1), axis=1)
  w = np.bincount(k, minlength=len(mix.weights)) / n
  se_w = np.sqrt(mix.weights * (1 - mix.weights) / n)
  if not np.all(np.abs(w - mix.weights) <= 3 * se_w):  # <=: one component has SE 0.
    errors.append(f"weights {w} vs {mix.weights} (3 SE = {3 * se_w})")
  true_mean = mix.weights @ mix.means
  true_var = mix.weights @ (mix.means**2 + mix.stds[:, None] ** 2) - true_mean**2
  for d in range(x.shape[1]):
    if not abs(x[:, d].mean() - true_mean[d]) < 3 * x[:, d].std() / np.sqrt(n):
      errors.append(f"mean[{d}] {x[:, d].mean():.4f} vs {true_mean[d]:.4f}")
    if var_allowance is not None:
      m = x[:, d] - x[:, d].mean()
      se_v = np.sqrt((np.mean(m**4) - np.mean(m**2) ** 2) / n)
      if not abs(x[:, d].var() - true_var[d]) < 3 * se_v + var_allowance:
        errors.append(f"var[{d}] {x[:, d].var():.4f} vs {true_var[d]:.4f} "
                      f"(3 SE = {3 * se_v:.4f} + {var_allowance})")
  return errors


def gaussian(mean, std) -> Mixture:
  mean = np.atleast_1d(np.asarray(mean, np.float64))
  return Mixture(np.ones(1), mean[None, :], np.asarray([std], np.float64))


def gaussian_flow_map(x_from, mean, std, alpha_from, sigma_from, alpha_to, sigma_to):
  """Exact probability-flow map of Gaussian data between two noise levels.

  Marginals are ``N(alpha mean, alpha^2 std^2 + sigma^2)``; the flow keeps
  standardized coordinates fixed.
  """
  sd_from = np.sqrt(alpha_from**2 * std**2 + sigma_from**2)
  sd_to = np.sqrt(alpha_to**2 * std**2 + sigma_to**2)
  return alpha_to * mean + sd_to / sd_from * (x_from - alpha_from * mean)
