"""Every experiment config loads, is locked, validates and builds its model;
the variant syntax (`configs.default.apply_variant`) changes exactly the keys
it names and rejects the rest with the list of valid keys; the family layers
(`configs.families`) set keys of default.py with their types, and each layer
of an experiment states only what differs from the layers below it."""
import dataclasses
import importlib
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import families
from diffusion import experiment, latent
from diffusion.eval import entries as sampler_specs
from diffusion.core import sdes

ROOT = pathlib.Path(__file__).resolve().parents[1]
# configs/families.py holds the layers the experiment files share (no get_config).
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                 if p.stem not in ("__init__", "families"))

# Parameters of each config's model (jax.eval_shape, no arrays made). DDPM's
# CIFAR-10 UNet is the paper's "35.7M"; DDPM++ / NCSN++ here have 62.5M (the
# paper's DDPM++ cont. has 62M; NCSN++'s FIR / progressive paths are absent).
PARAMS = {
    "cifar10_ddpm": 35_746_307,
    "cifar10_ddpmpp_vp": 62_513_667,
    "cifar10_edm": 56_524_291,  # EDM's DDPM++ has 55.7M (FIR resampling etc. absent here).
    "cifar10_vdm": 30_589_318,  # 30,586,243 in the UNet + 3,075 in the learned schedule.
    "cifar10_ncsnpp_ve": 62_513_667,
    "digits_ddpm": 651_041,
    "fashion_mnist_ddpm": 6_469_889,
    "flowers_ddim": 20_761_923,
    "mnist_ddpm": 6_469_889,
    "mnist_ddpm_cpu": 1_112_801,  # The README result table's scaled-down run.
    "mnist_edm": 6_469_889,  # mnist_ddpm's network: EDM changes the process, not the UNet.
    "mnist_edm_cpu": 1_112_801,
    "mnist_vdm": 6_472_964,  # mnist_ddpm's UNet + the 1024-unit schedule network (3,075).
    "mnist_vdm_cpu": 1_115_876,
    "smoke": 10_593,
    # Class-conditional twins: + the (10 + 1 null) x 4 ch class embedding table.
    "cifar10_ddpm_cond": 35_746_307 + 11 * 512,
    "digits_ddpm_cond": 651_041 + 11 * 128,
    "mnist_ddpm_cond": 6_469_889 + 11 * 256,
    "mnist_ddpm_cond_cpu": 1_112_801 + 11 * 128,
    # Text twins: the UNet with cross-attention transformer blocks (at the attention
    # resolutions and in the middle) and the pooled-text Dense (64 -> 4 ch = 128:
    # 8,320) + the 164,864-parameter text encoder (vocabulary 1000 x 64, 12 positions,
    # 2 layers of width 64).
    "digits_text": 709_473 + 8_320 + 164_864,
    "mnist_text_cpu": 1_346_529 + 8_320 + 164_864,
    # Latent diffusion (issue 16): the autoencoders (encoder + decoder), and the latent
    # text models' one-level UNets on 4x4x2 / 7x7x4 latents + the same text encoder.
    "digits_autoencoder": 156_981,
    "mnist_autoencoder": 647_705,
    "digits_latent_text": 188_002 + 164_864,  # 4x4 UNet with its transformer block (ch 32).
    "mnist_latent_text": 1_324_740 + 164_864,  # 7x7 UNet, ch 64, two ResBlocks.
}
# The latent shapes the latent configs are built on here (their autoencoders' workdirs
# are not trained in this test): digits_autoencoder's and mnist_autoencoder's.
LATENT_SHAPES = {"digits_latent_text": ((4, 4, 2), (8, 8, 1)),
                 "mnist_latent_text": ((7, 7, 4), (28, 28, 1))}

# TFDS configs: (dataset name, image size, channels).
TFDS = {
    "cifar10_ddpm": ("cifar10", 32, 3),
    "cifar10_ddpm_cond": ("cifar10", 32, 3),
    "cifar10_ddpmpp_vp": ("cifar10", 32, 3),
    "cifar10_ncsnpp_ve": ("cifar10", 32, 3),
    "cifar10_edm": ("cifar10", 32, 3),
    "cifar10_vdm": ("cifar10", 32, 3),
    "fashion_mnist_ddpm": ("fashion_mnist", 28, 1),
    "flowers_ddim": ("oxford_flowers102", 64, 3),
}


def _get(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _flat(config):
  out = {}
  def walk(node, prefix):
    for k, v in node.items():
      if hasattr(v, "items"):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(config, "")
  return out


def test_every_config_file_is_listed():
  assert set(CONFIGS) == set(PARAMS) | {"default"}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_locked_and_valid(name):
  config = _get(name)
  with pytest.raises(AttributeError):
    config.train.num_step = 3  # A typo'd key fails.
  with pytest.raises(AttributeError):
    config.no_such_section = 1
  experiment.validate_config(config)
  for entry in sampler_specs.eval_samplers(config):  # --mode eval's samplers fit the model.
    assert entry.config.sample.method == entry.method
  doc = importlib.import_module(f"configs.{name}").__doc__ or ""
  assert len(doc) > 200, f"configs/{name}.py needs a docstring citing its numbers"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_model_builds_with_stated_parameter_count(name):
  config = _get(name)
  codec = None
  if name in LATENT_SHAPES:
    codec = latent.Codec(None, None, 1.0, *LATENT_SHAPES[name], {})
  state = experiment.build(config, codec=codec).abstract_state()
  assert sum(p.size for p in jax.tree.leaves(state.params)) == PARAMS[name]


def test_cifar10_ddpm_is_the_papers_35_7m_unet():
  config = _get("cifar10_ddpm")
  assert config.optim.lr == 2e-4 and config.data.batch_size == 128
  assert config.optim.warmup_steps == 5000 and config.ema.decay == 0.9999
  assert config.model.dropout == 0.1 and config.train.num_steps == 800_000
  assert config.optim.grad_clip == 1.0 and config.diffusion.schedule == "linear"
  assert config.data.random_flip


@pytest.mark.parametrize("name", sorted(TFDS))
def test_tfds_configs_name_their_dataset(name):
  config = _get(name)
  assert config.data.source == "tfds"
  assert (config.data.name, config.data.image_size, config.data.channels) == TFDS[name]
  if name == "flowers_ddim":
    assert config.data.crop == "center"
    assert config.sample.method == "ddim" and config.sample.eta == 0.0
    assert 50 <= config.sample.num_steps <= 100


def test_mnist_reads_the_prepared_idx_files_or_tfds(monkeypatch, tmp_path):
  monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))  # Where `diffusion.data prepare` writes.
  config = _get("mnist_ddpm")
  assert config.data.source == "files" and config.data.data_dir == str(tmp_path / "mnist")
  assert (config.data.image_size, config.data.channels) == (28, 1)
  config = _get("mnist_ddpm", "source=tfds")
  assert (config.data.source, config.data.name, config.data.data_dir) == ("tfds", "mnist", "")
  with pytest.raises(ValueError, match="valid: files, tfds"):
    _get("mnist_ddpm", "source=digits")


def test_score_sde_configs():
  vp, ve = _get("cifar10_ddpmpp_vp"), _get("cifar10_ncsnpp_ve")
  for c in (vp, ve):
    assert c.diffusion.type == "continuous" and c.diffusion.weighting == "sigma2"
    assert c.sample.method == "predictor_corrector" and c.sample.snr == 0.16
    assert (c.sample.predictor, c.sample.corrector) == ("reverse_diffusion", "langevin")
    assert c.model.num_res_blocks == 4 and c.model.skip_rescale and c.model.resblock_updown
  assert (vp.diffusion.sde, vp.diffusion.beta_min, vp.diffusion.beta_max) == ("vp", 0.1, 20.0)
  assert (ve.diffusion.sde, ve.diffusion.sigma_min, ve.diffusion.sigma_max) == ("ve", 0.01, 50.0)
  assert ve.model.embedding == "fourier" and ve.sample.num_steps == 1000


def _denoiser(model, config):
  """The experiment record's denoiser of `model` (a stand-in network) with no params."""
  exp = experiment.build(config)
  return dataclasses.replace(exp, model=model).denoiser({})


def test_ve_network_is_given_sigma_not_t():
  """With embedding="fourier" the UNet embeds log(input): the denoiser must feed sigma(t)."""
  config = _get("cifar10_ncsnpp_ve")
  process = experiment.noise_process(config)
  assert isinstance(process, sdes.VESDE)
  seen = {}

  class Recorder:
    def apply(self, variables, x, t, y, train, rngs):
      seen["t"] = t
      return x

  t = jnp.array([0.0, 0.5, 1.0])
  _denoiser(Recorder(), config).output(jnp.zeros((3, 2, 2, 3)), t)
  np.testing.assert_allclose(seen["t"], [0.01, 0.01 * 5000 ** 0.5, 50.0], rtol=1e-5)
  vp = _get("cifar10_ddpmpp_vp")  # Sinusoidal: t itself (scaled inside the UNet).
  _denoiser(Recorder(), vp).output(jnp.zeros((3, 2, 2, 3)), t)
  np.testing.assert_array_equal(seen["t"], t)
  assert vp.model.time_scale == 999.0


def test_variant_changes_exactly_the_named_keys():
  base = _flat(_get("cifar10_ddpm"))
  varied = _flat(_get("cifar10_ddpm", "schedule=cosine, sampler=ddim,steps=50,eta=0.5"))
  changed = {k: (base[k], varied[k]) for k in base if base[k] != varied[k]}
  assert changed == {"diffusion.schedule": ("linear", "cosine"),
                     "sample.method": ("ddpm", "ddim"), "sample.num_steps": (1000, 50),
                     "sample.eta": (0.0, 0.5)}
  assert isinstance(varied["sample.num_steps"], int)
  assert _flat(_get("cifar10_ddpm", "")) == base


def test_digits_preset_is_the_ddpm_variant():
  config = _get("digits_ddpm", "ddpm")
  assert (config.sample.method, config.sample.num_steps) == ("ddpm", 1000)
  assert _flat(config) == _flat(_get("digits_ddpm", "sampler=ddpm,steps=1000"))


def test_bad_variants_error_with_the_valid_keys():
  with pytest.raises(ValueError, match="unknown variant key 'schedul'.*valid keys: .*schedule"):
    _get("cifar10_ddpm", "schedul=cosine")
  with pytest.raises(ValueError, match="sample.num_steps is not a int"):
    _get("cifar10_ddpm", "steps=fifty")
  with pytest.raises(ValueError, match="given twice"):
    _get("smoke", "steps=2,steps=3")
  with pytest.raises(ValueError, match="preset.*ddpm"):
    _get("digits_ddpm", "ddim")
  with pytest.raises(ValueError, match="key=value"):
    _get("flowers_ddim", "ddpm")


def test_apply_variant_converts_types():
  config = default.get_config()
  default.apply_variant(config, "lr=1e-3,seed=7", source="t")
  assert config.optim.lr == 1e-3 and config.seed == 7 and isinstance(config.seed, int)
  default.apply_variant(config, "flip=true", {"flip": "data.random_flip"})
  assert config.data.random_flip is True
  with pytest.raises(ValueError, match="not a bool"):
    default.apply_variant(config, "flip=maybe", {"flip": "data.random_flip"})


def test_any_linear_discrete_model_takes_every_sampler():
  for method in ("euler_maruyama", "predictor_corrector", "probability_flow", "ddim"):
    experiment.validate_config(_get("cifar10_ddpm", f"sampler={method}"))
  config = _get("cifar10_ddpm", "sampler=euler_maruyama")
  _, _, sde = experiment.build(config).sampler()
  assert isinstance(sde, sdes.VPSDE)
  np.testing.assert_allclose([sde.beta_min, sde.beta_max], [0.1, 20.0], rtol=1e-5)
  with pytest.raises(ValueError, match="diffusion.schedule='cosine'.*ddpm, ddim"):
    experiment.validate_config(_get("cifar10_ddpm", "schedule=cosine,sampler=probability_flow"))
  with pytest.raises(ValueError, match="discrete-time sampler.*ddim, euler_maruyama"):
    experiment.validate_config(_get("cifar10_ddpmpp_vp", "sampler=ddpm"))
  # DDIM runs a continuous-time model in sigma space (issue 13).
  _, _, on = experiment.build(_get("cifar10_ddpmpp_vp", "sampler=ddim")).sampler()
  assert isinstance(on, sdes.VPSDE)


def _stated(layer):
  """{dotted key: value} of one layer."""
  return {f"{section}.{key}": v for section, values in layer.items() for key, v in values.items()}


def _changed(a, b):
  flat_a, flat_b = _flat(a), _flat(b)
  return {k for k in flat_a if flat_a[k] != flat_b[k]}


FAMILIES = ("cifar10_data", "ddpm_unet", "ddpm_optimiser", "ddpm_process", "ddpm",
            "score_sde_cifar10", "ddpm_28x28", "digits_8x8", "short_cpu_run")


@pytest.mark.parametrize("name", FAMILIES)
def test_family_sets_keys_of_default_with_their_types(name):
  layers = getattr(families, name)()
  assert isinstance(layers, tuple) and layers
  base = default.get_config()
  config = families.resolve(layers)  # apply() raises on a new key or another type.
  stated = {}
  for layer in layers:
    stated.update(_stated(layer))
  for key, value in stated.items():
    section, leaf = key.split(".")
    assert type(value) is base[section].get_type(leaf), key
  # The family sets exactly the keys it states: the rest stay default.py's.
  assert _changed(base, config) <= set(stated)
  assert all(_flat(config)[k] == v for k, v in stated.items())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_layer_states_only_what_differs(name):
  module = importlib.import_module(f"configs.{name}")
  assert _flat(families.resolve(module.layers())) == _flat(_get(name))
  seen = {}
  for i, layer in enumerate(module.layers()):
    for key, value in _stated(layer).items():
      assert key not in seen or seen[key] != value, (
          f"layer {i} of configs/{name}.py restates {key}={value!r} of a layer below it")
      seen[key] = value


def test_files_of_a_family_differ_exactly_in_what_they_state():
  mnist, fashion = (importlib.import_module(f"configs.{n}")
                    for n in ("mnist_ddpm", "fashion_mnist_ddpm"))
  assert mnist.layers()[:-1] == fashion.layers()[:-1] == families.ddpm_28x28()
  assert _changed(_get("mnist_ddpm"), _get("fashion_mnist_ddpm")) == {
      "data.source", "data.name", "data.data_dir"}
  vp, ve = (importlib.import_module(f"configs.{n}")
            for n in ("cifar10_ddpmpp_vp", "cifar10_ncsnpp_ve"))
  assert vp.layers()[:-1] == ve.layers()[:-1] == families.score_sde_cifar10()
  assert _changed(_get("cifar10_ddpmpp_vp"), _get("cifar10_ncsnpp_ve")) == {
      "model.embedding", "model.time_scale", "diffusion.sde", "ema.decay", "sample.eps"}
  assert set(_stated(vp.layers()[-1])) | set(_stated(ve.layers()[-1])) == {
      "model.embedding", "model.time_scale", "diffusion.sde", "ema.decay", "sample.eps"}
  cpu = importlib.import_module("configs.mnist_ddpm_cpu")
  assert cpu.layers()[:len(mnist.layers())] == mnist.layers()
  assert _changed(_get("mnist_ddpm"), _get("mnist_ddpm_cpu")) <= set(
      _stated(cpu.layers()[-1])) | set(_stated(families.short_cpu_run()[0]))


def test_apply_rejects_unknown_keys_and_other_types():
  config = default.get_config()
  with pytest.raises(ValueError, match="layer section 'modle' is not a section.*valid: .*model"):
    families.apply(config, {"modle": {"ch": 8}})
  with pytest.raises(ValueError, match="layer key model.chh is not in configs/default.py"):
    families.apply(config, {"model": {"chh": 8}})
  with pytest.raises(ValueError, match="model.time_scale=999 is a int; .* is a float"):
    families.apply(config, {"model": {"time_scale": 999}})
  with pytest.raises(ValueError, match="channel_mult=\\[1, 2\\] is a list; .* is a tuple"):
    families.apply(config, {"model": {"channel_mult": [1, 2]}})
  assert families.apply(config, {"model": {"ch": 8}}) is config and config.model.ch == 8
  assert families.stack(families.ddpm(), {"model": {"ch": 8}}) == (
      *families.ddpm_unet(), *families.ddpm_optimiser(), *families.ddpm_process(),
      {"model": {"ch": 8}})
