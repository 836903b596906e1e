"""Sample-quality metrics on feature vectors: FID, KID, Inception Score, precision/recall.

Everything here works on features ``[N, D]`` (float64 on the host) produced by
any extractor (Inception-v3 pool3 for natural images, the project's own
classifier for MNIST-like data). Statistics are accumulated in a streaming
way, so 50k samples never sit in memory at once, and statistics of several
processes merge exactly.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class FeatureStats:
  """Streaming mean and covariance of feature vectors (Chan et al.'s parallel update).

  ``update(features [n, D])`` adds a batch; ``merge(other)`` combines two
  accumulators (e.g. from two processes) exactly; ``mean`` and ``cov``
  (unbiased, ``N - 1``) are float64.
  """

  dim: int
  count: int = 0
  _mean: np.ndarray | None = None
  _m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

  def __post_init__(self):
    if self._mean is None:
      self._mean = np.zeros(self.dim)
      self._m2 = np.zeros((self.dim, self.dim))

  def update(self, features) -> "FeatureStats":
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features must have shape [n, {self.dim}], got {x.shape}")
    if x.shape[0] == 0:
      return self
    batch_mean = x.mean(axis=0)
    dev = x - batch_mean
    return self._combine(x.shape[0], batch_mean, dev.T @ dev)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    if other.dim != self.dim:
      raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
    return self._combine(other.count, other._mean, other._m2) if other.count else self

  def _combine(self, n_b, mean_b, m2_b) -> "FeatureStats":
    n_a, n = self.count, self.count + n_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (n_b / n)
    self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    self.count = n
    return self

  @property
  def mean(self) -> np.ndarray:
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError(f"covariance needs at least 2 feature vectors, have {self.count}")
    return self._m2 / (self.count - 1)

  def to_arrays(self) -> dict:
    """For saving reference statistics (``np.savez``): count, mean, m2."""
    return {"count": np.int64(self.count), "mean": self._mean, "m2": self._m2}

  @classmethod
  def from_arrays(cls, arrays) -> "FeatureStats":
    mean = np.asarray(arrays["mean"], np.float64)
    return cls(mean.shape[0], int(arrays["count"]), mean, np.asarray(arrays["m2"], np.float64))

  def to_mu_sigma(self) -> dict:
    """``{"mu": mean [D], "sigma": cov [D, D]}`` (float64): the layout of
    pytorch-fid's ``--save-stats`` files and of ADM's reference batches."""
    return {"mu": self.mean, "sigma": self.cov}

  @classmethod
  def from_mu_sigma(cls, mu, sigma, count: int | None = None) -> "FeatureStats":
    """Statistics from a published ``mu`` / ``sigma`` (e.g. pytorch-fid's npz).

    Such files do not say how many vectors they summarise: without `count`
    the statistics hold ``cov == sigma`` exactly (stored as 2 vectors), enough
    for FID but not for `merge`.
    """
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f"mu must be [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}")
    n = 2 if count is None else int(count)
    return cls(mu.shape[0], n, mu.copy(), sigma * (n - 1))


def is_mu_sigma(arrays) -> bool:
  """Whether an npz's arrays are a published ``mu`` / ``sigma`` pair (no m2, count)."""
  return "mu" in arrays and "sigma" in arrays and "m2" not in arrays


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians.

  ``tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}``; the inner matrix is
  symmetric PSD, so both roots come from symmetric eigendecompositions (no
  complex round-off, unlike a general ``sqrtm`` of ``S1 S2``).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}")
  root1 = _sqrtm_psd(cov1)
  middle = np.linalg.eigvalsh(root1 @ cov2 @ root1)
  tr_sqrt = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fid(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
  """FID between two sets of feature statistics (Heusel et al. 2017)."""
  return frechet_distance(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov)


def kid(features_a, features_b, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0):
  """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel.

  ``k(x, y) = (x.y / D + 1)^3``; the unbiased estimator drops the diagonal
  terms, so its expectation is 0 when both sets come from one distribution.
  Returns ``(mean, std)`` over ``num_subsets`` random subsets of
  ``min(subset_size, N_a, N_b)`` vectors from each set.
  """
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"features must be [N, D] with equal D, got {a.shape} and {b.shape}")
  m = min(subset_size, a.shape[0], b.shape[0])
  if m < 2:
    raise ValueError(f"KID needs at least 2 vectors per set, got {a.shape[0]} and {b.shape[0]}")
  d = a.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = a[rng.choice(a.shape[0], m, replace=False)]
    y = b[rng.choice(b.shape[0], m, replace=False)]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = m * (m - 1)
    values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                  - 2.0 * kxy.mean())
  values = np.asarray(values)
  return float(values.mean()), float(values.std())


def inception_score(logits, num_splits: int = 10):
  """``exp(E_x KL(p(y|x) || p(y)))`` over ``num_splits`` splits (Salimans et al. 2016).

  ``logits``: ``[N, K]`` class logits. Returns ``(mean, std)`` over splits;
  it lies in ``[1, K]``.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < num_splits:
    raise ValueError(f"logits must be [N, K] with N >= num_splits={num_splits}, got {logits.shape}")
  logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(logp, num_splits):
    log_marginal = np.log(np.mean(np.exp(part), axis=0))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
  """Each vector's distance to its k-th nearest other vector (scikit-learn's exact
  search; its first neighbour is the vector itself)."""
  from sklearn.neighbors import NearestNeighbors  # pylint: disable=g-import-not-at-top
  distances, _ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
  return distances[:, k]


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
  # Hand-written: every centre has a radius of its own, which scikit-learn's radius
  # queries (one radius per query point) do not express.
  d2 = np.sum(points**2, 1)[:, None] + np.sum(centres**2, 1)[None] - 2 * points @ centres.T
  return float(np.mean(np.any(np.sqrt(np.maximum(d2, 0.0)) <= radii[None], axis=1)))


def precision_recall(real, fake, k: int = 3):
  """Improved precision and recall (Kynkaenniemi et al. 2019) with k-NN manifolds.

  Precision: fraction of fake vectors inside the union of balls around real
  vectors (radius = distance to the k-th nearest real neighbour); recall: the
  same with the roles swapped. ``O(N^2)`` memory: use a few thousand vectors.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"precision/recall needs more than k={k} vectors per set")
  precision = _coverage(fake, real, _knn_radii(real, k))
  recall = _coverage(real, fake, _knn_radii(fake, k))
  return precision, recall
