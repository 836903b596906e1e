"""`mnist_ddpm.py` scaled down to train in under an hour on a 2-core CPU.

    python -m diffusion.main --config configs/mnist_ddpm_cpu.py --workdir /tmp/mnist_cpu

The README's MNIST result table comes from this config (no accelerator was
available to the project when it was made). Same data (the real MNIST idx files
in ``$DIFFUSION_DATA/mnist``: `python -m diffusion.data prepare mnist`), the same noise process (Ho et al. 2020: linear
betas 1e-4 .. 0.02, T = 1000, eps prediction, simple loss) and the same
samplers as `mnist_ddpm.py`. What is scaled down, and why:

- Network: ch 32 instead of 64, one ResBlock per level instead of two,
  self-attention at 7x7 instead of 14x14, no dropout (a 3-epoch run does not
  overfit): 1,112,801 parameters instead of 6.47M. Measured on the 2-core
  machine of ``benchmarks/README.md``: ~0.9 s per step of 64 images and ~250
  images/s in a forward pass (what sampling costs).
- Length: 3,000 steps of batch 64 (192k images, 3.2 epochs) instead of 40,000
  of batch 128 (85 epochs).
- Optimiser for a short run: lr 1e-3 (5x DDPM's 2e-4) after 200 warmup steps,
  cosine decay to 1e-4; EMA with k-diffusion's warmup (power 3/4) capped at
  0.999, so that the EMA averages the last few hundred steps, not 2000.
- Sample grids only at the end, with 100 DDIM steps (1000 ancestral steps of
  64 images cost ~4 minutes here).

Variants: `mnist_ddpm_cpu.py:key=value,...` with the keys of
`default.VARIANT_KEYS`.
"""
from configs import default
from configs import families
from configs import mnist_ddpm


def layers():
  """`mnist_ddpm.py`'s layers and a short CPU run, then what is scaled down and the eval table."""
  return families.stack(mnist_ddpm.layers(), families.short_cpu_run(), dict(
      data=dict(batch_size=64),
      model=dict(ch=32, num_res_blocks=1, attention_resolutions=(7,), dropout=0.0),
      optim=dict(lr=1e-3, warmup_steps=200, decay_steps=3000),
      train=dict(num_steps=3000, sample_every=3000),
      # --mode eval: the README's table. The DDIM paper's rows (DDIM 10/20/50/100
      # steps at eta 0 and 1, DDPM 1000), Euler-Maruyama on the VP SDE of these
      # betas at the same 1000 steps, the probability-flow ODE with 50 Heun steps
      # (100 evaluations); N = 256 samples each (~2,500 network evaluations per
      # sample over all rows at ~250 images/s: ~45 minutes on 2 cores), plus a
      # row of 256 real test images (the floor of each metric at this N), scored
      # by the project's classifier (`python -m diffusion.classify`), and bits/dim
      # (DDPM's bound, 1000 terms per image) on 64 test images.
      eval=dict(
          specs=(
              "ddim:steps=10,eta=0", "ddim:steps=20,eta=0", "ddim:steps=50,eta=0",
              "ddim:steps=100,eta=0", "ddim:steps=10,eta=1", "ddim:steps=20,eta=1",
              "ddim:steps=50,eta=1", "ddim:steps=100,eta=1",
              "probability_flow:steps=50,ode_method=heun", "euler_maruyama:steps=1000", "ddpm"),
          num_samples=256, batch_size=256, baseline_split="test",
          bpd_num=64)))


def get_config(arg=None):
  return default.apply_variant(families.resolve(layers()), arg, source="mnist_ddpm_cpu.py")
