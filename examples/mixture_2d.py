import jax, jax.numpy as jnp
from diffusion import grids, schedules, sdes, samplers

w, mu, s = jnp.array([0.6, 0.4]), jnp.array([[-1.0, 0.0], [1.0, 0.5]]), 0.2  # data: 2-D mixture
def mix_score(x, a, sd):  # exact score of the mixture noised to x = a x0 + sd z
  var = (a**2 * s**2 + sd**2)[:, None, None]; d = x[:, None] - a[:, None, None] * mu
  r = jax.nn.softmax(jnp.log(w) - (d**2).sum(-1) / (2 * var[..., 0]), axis=1)
  return (r[..., None] * -d / var).sum(1)
sched, vp, key, shape = schedules.get("linear", num_steps=1000), sdes.VPSDE(), jax.random.PRNGKey(0), (2000, 2)
eps_fn = lambda x, t: -jnp.sqrt(1 - sched.alpha_bars[t])[:, None] * mix_score(x, jnp.sqrt(sched.alpha_bars[t]), jnp.sqrt(1 - sched.alpha_bars[t]))
score_fn = lambda x, t: mix_score(x, *vp.marginal_coeffs(t))
denoise = lambda x, sg: x + sg[:, None] ** 2 * mix_score(x, jnp.ones_like(sg), sg)  # sigma space: x = x0 + sigma z
sigmas = grids.karras_sigmas(30, 0.002, 80.0)  # 30 steps from 80 to 0.002, then 0
for name, x in [("ddpm", samplers.ddpm(eps_fn, sched, key, shape)),
                ("ddim", samplers.ddim(eps_fn, sched, key, shape, num_steps=50, eta=0.0)),
                ("euler_maruyama", samplers.euler_maruyama(score_fn, vp, key, shape, num_steps=500)),
                ("predictor_corrector", samplers.predictor_corrector(score_fn, vp, key, shape, num_steps=500)),
                ("probability_flow", samplers.probability_flow(score_fn, vp, key, shape, num_steps=100, method="heun")),
                ("edm_heun", samplers.edm_heun(denoise, sigmas, key, shape)),
                ("dpmpp_2m", samplers.dpmpp_2m(denoise, sigmas, key, shape))]:
  print(f"{name:20s} fraction in the right-hand mode: {float((x[:, 0] > 0).mean()):.3f} (exact 0.4)")
