"""`diffusion.port`: diffusers' UNet2DModel (the published DDPM checkpoints' class)
ported into this project computes what diffusers computes.

The diffusers models are randomly initialised here (no hub access), with every
1-D parameter (GroupNorm scales and shifts, biases) moved off its initial value
so that no layer is an identity; their folders are written by diffusers'
`save_pretrained`, one as safetensors and one as a PyTorch pickle.

Tolerance of the output comparison (float32 on both sides, the same arithmetic
in another summation order: oneDNN's convolutions against XLA's): each 3x3 conv
sums K = 9 * 256 = 2304 products, whose rounding error is about sqrt(K) *
2^-24 = 2.9e-6 of the output scale; about a dozen such layers lie on the
deepest path and their errors add in quadrature, ~1e-5 of the output RMS. The
bound below is 3e-5 of the RMS; the measured error is 7e-6. A wrong padding
gives errors of the order of the output itself (1.3x its RMS, measured).
"""
import json
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from configs import cifar10_ddpm
from diffusion import experiment, port
from diffusion.core import checks
from diffusion.models import unet as unet_lib
from diffusion.run import checkpoint, cli, resume

REL_TOL = 3e-5  # Of the output RMS; derived in the module docstring.
# google/ddpm-cifar10-32's config.json (the published DDPM CIFAR-10 model).
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                          "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, flip_sin_to_cos=False,
    freq_shift=1, downsample_padding=0, act_fn="silu", center_input_sample=False,
    mid_block_scale_factor=1, time_embedding_type="positional")
# A small model of the same family: 2 levels of 128 channels (this UNet's
# GroupNorms have min(32, C / 4) groups, 32 from 128 channels up, as diffusers').
SMALL = dict(DDPM_CIFAR10, sample_size=16, block_out_channels=(128, 128), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def _diffusers_folder(folder, padding, safetensors, seed):
  torch.manual_seed(seed)
  model = UNet2DModel(**dict(SMALL, downsample_padding=padding)).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=safetensors)
  DDPMScheduler(variance_type="fixed_small", clip_sample=True).save_pretrained(folder)
  return model


def _config_of_command(command):
  """The config that the sample command `port` printed builds (via `run.cli`)."""
  args = shlex.split(command)
  assert args[:3] == ["python", "-m", "diffusion.main"]
  values = cli.parse(args[3:], lambda v: None, "test")
  return values.config


@pytest.fixture(scope="module", params=[(0, True), (1, False)],
                ids=["padding0-safetensors", "padding1-bin"])
def ported(request, tmp_path_factory):
  padding, safetensors = request.param
  root = tmp_path_factory.mktemp(f"port{padding}")
  model = _diffusers_folder(root / "hf", padding, safetensors, seed=padding)
  workdir = root / "wd"
  config = cifar10_ddpm.get_config()
  overrides = port.port(config, str(root / "hf"), str(workdir))
  exp = experiment.build(config)
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    state, data = ckpt.restore(0, exp.abstract_state())
  return dict(model=model, config=config, overrides=overrides, exp=exp, state=state, data=data,
              workdir=workdir, padding=padding, root=root)


def test_ported_unet_computes_what_diffusers_computes(ported):
  x = np.random.default_rng(0).standard_normal((3, 16, 16, 3)).astype(np.float32)
  t = np.array([0, 417, 999])
  with torch.no_grad():
    ref = ported["model"](torch.from_numpy(x.transpose(0, 3, 1, 2)),
                          torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  rms = float(np.sqrt(np.mean(ref ** 2)))
  ours = np.asarray(ported["exp"].apply(ported["state"].ema_params, jnp.asarray(x), jnp.asarray(t)))
  assert np.max(np.abs(ours - ref)) < REL_TOL * rms
  # The other padding computes another function: the option is what makes them agree.
  config = ported["config"].copy_and_resolve_references()
  config.model.downsample_padding = 1 - ported["padding"]
  other = np.asarray(experiment.build(config).apply(ported["state"].ema_params, jnp.asarray(x),
                                                    jnp.asarray(t)))
  assert np.max(np.abs(other - ref)) > 100 * REL_TOL * rms


def test_port_writes_a_workdir_that_later_commands_accept(ported):
  state, config = ported["state"], ported["config"]
  assert int(state.step) == 0 and ported["data"] == {"epoch": 0, "position": 0}
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(a, b)
  # The scheduler's settings reached the config: DDPM's betas, eps, fixed_small.
  assert (config.diffusion.schedule, config.diffusion.num_steps) == ("linear", 1000)
  assert (config.sample.variance, config.sample.clip_denoised) == ("beta_tilde", True)
  assert config.model.downsample_padding == ported["padding"]
  saved = json.loads((ported["workdir"] / "config.json").read_text())
  assert saved["model"]["channel_mult"] == [1, 1] and saved["data"]["image_size"] == 16
  # The printed overrides rebuild the workdir's config: --mode sample accepts it.
  command = " ".join(["python -m diffusion.main --config configs/cifar10_ddpm.py",
                      *ported["overrides"]])
  rebuilt = _config_of_command(command)
  resume.check_config(rebuilt, ported["workdir"], write=False, mode="sample")
  assert rebuilt.sample.variance == "beta_tilde"
  # Nothing is overwritten: a second port into the same workdir is refused.
  with pytest.raises(checks.ConfigError, match="holds a run already"):
    port.port(cifar10_ddpm.get_config(), str(ported["root"] / "hf"), str(ported["workdir"]))


def test_the_published_cifar10_layout_ports_parameter_for_parameter():
  """google/ddpm-cifar10-32's layout (randomly initialised, 35.7M parameters) maps
  onto configs/cifar10_ddpm.py's UNet with no setting changed and no weight left over."""
  torch.manual_seed(0)
  weights = {k: v.numpy() for k, v in UNet2DModel(**DDPM_CIFAR10).state_dict().items()}
  fields = port.unet_fields(DDPM_CIFAR10)
  config = cifar10_ddpm.get_config()
  assert port._set(config, "model", fields["model"]) == []  # pylint: disable=protected-access
  assert fields["data"] == dict(image_size=32, channels=3)
  target = experiment.build(config).abstract_state().params
  params = port.convert(weights, target, levels=4)
  assert unet_lib.param_count(params) == 35_746_307 == sum(w.size for w in weights.values())
  np.testing.assert_array_equal(params["down1_attn0"]["qkv"]["kernel"][:, 256:512],
                                weights["down_blocks.1.attentions.0.to_k.weight"].T)
  np.testing.assert_array_equal(params["up0_res2"]["skip"]["kernel"],
                                weights["up_blocks.3.resnets.2.conv_shortcut.weight"][:, :, 0, 0].T)


def test_the_published_celebahq_layout_gives_the_same_model():
  """google/ddpm-celebahq-256's layout (its config.json): the same parameter count on
  both sides (diffusers' counted on the meta device, no memory)."""
  celebahq = dict(DDPM_CIFAR10, sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
                  down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
  fields = port.unet_fields(celebahq)
  assert fields["model"]["channel_mult"] == (1, 1, 2, 2, 4, 4)
  assert fields["model"]["attention_resolutions"] == (16,)
  with torch.device("meta"):
    theirs = sum(p.numel() for p in UNet2DModel(**celebahq).parameters())
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  net = unet_lib.UNet(**fields["model"])
  ours = jax.eval_shape(lambda r, x: net.init(r, x, jnp.zeros((1,), jnp.int32), train=False),
                        jax.random.key(0), x)["params"]
  assert unet_lib.param_count(ours) == theirs == 113_673_219


def test_safetensors_reader_reads_what_diffusers_wrote(tmp_path):
  from safetensors.numpy import save_file  # The reference writer.
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
            "c": np.ones((2, 2, 1), np.float16)}
  save_file(arrays, str(tmp_path / "x.safetensors"))
  read = port.read_safetensors(tmp_path / "x.safetensors")
  assert sorted(read) == sorted(arrays)
  for k, v in arrays.items():
    assert read[k].dtype == v.dtype
    np.testing.assert_array_equal(read[k], v)


@pytest.mark.parametrize("change, message", [
    (dict(flip_sin_to_cos=True), "flip_sin_to_cos=True"),
    (dict(norm_eps=1e-5), "norm_eps=1e-05"),
    (dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D")), "CrossAttnDownBlock2D"),
    (dict(up_block_types=("UpBlock2D", "AttnUpBlock2D")), "do not mirror"),
    (dict(block_out_channels=(64, 128)), "norm_num_groups=32"),
    (dict(attention_head_dim=64), None),  # 128 / 64 = 2 heads everywhere: supported.
])
def test_unsupported_settings_are_named(change, message):
  config = dict(SMALL, **change)
  if message is None:
    assert port.unet_fields(config)["model"]["num_heads"] == 2
    return
  with pytest.raises(checks.ConfigError, match=message):
    port.unet_fields(config)


def test_command_line_errors_are_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    port.main(["--config", "configs/cifar10_ddpm.py", "--workdir", str(tmp_path / "w")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == "error: --diffusers is required"
  code = port.main(["--config", "configs/cifar10_ddpm.py", "--workdir", str(tmp_path / "w"),
                    "--diffusers", str(tmp_path / "missing")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.count("\n") == 0 and "no such folder" in err
  assert not (tmp_path / "w").exists()


def test_the_twin_benchmark_builds_a_diffusers_twin_of_a_config():
  """`benchmarks/twin.py`'s diffusers net of `configs/mnist_ddpm_cpu.py` (its 8- and
  16-group GroupNorms set per module) has this UNet's parameter count and, with its
  weights ported, this UNet's outputs (bound REL_TOL of the RMS, as above)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
  import twin  # pylint: disable=g-import-not-at-top
  config = twin.load_config("mnist", 2, "float32")
  torch.manual_seed(0)
  net = UNet2DModel(**twin.unet2d_kwargs(config)).eval()
  twin.match_groups(net)
  with torch.no_grad():
    for p in net.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  exp = experiment.build(config)
  target = jax.eval_shape(exp.create_state, jax.random.PRNGKey(0)).params
  weights = {k: v.numpy() for k, v in net.state_dict().items()}
  params = port.convert(weights, target, len(config.model.channel_mult))
  assert unet_lib.param_count(params) == sum(p.numel() for p in net.parameters()) == 1_112_801
  x = np.random.default_rng(1).standard_normal((2, 28, 28, 1)).astype(np.float32)
  t = np.array([3, 900])
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2)),
              torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(exp.apply(params, jnp.asarray(x), jnp.asarray(t)))
  assert np.max(np.abs(ours - ref)) < REL_TOL * float(np.sqrt(np.mean(ref ** 2)))
