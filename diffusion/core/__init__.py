"""Pure JAX numerics: noise processes, time grids, the denoiser, samplers, ODE
solvers, losses and likelihoods. Nothing here imports Flax or the rest of the
package (tests/test_layers.py enforces it); models enter as callables."""
