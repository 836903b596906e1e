"""Published DDPM models in this project: a diffusers `UNet2DModel` folder -> a workdir.

    python -m diffusion.port --diffusers ~/models/ddpm-cifar10-32 \\
        --config configs/cifar10_ddpm.py --workdir /tmp/ddpm_cifar10
    python -m diffusion.main --config configs/cifar10_ddpm.py --workdir /tmp/ddpm_cifar10 \\
        --mode sample            # (plus the overrides the port printed, if any)

The folder is what ``huggingface-cli download google/ddpm-cifar10-32 --local-dir
DIR`` leaves (or the other DDPM ports: google/ddpm-celebahq-256,
google/ddpm-church-256, ...): a `UNet2DModel`'s ``config.json`` and weights
(``diffusion_pytorch_model.safetensors``, read here without torch, or ``.bin``,
which needs torch), at the top or under ``unet/``; a ``scheduler_config.json``
there (or under ``scheduler/``) gives the betas, the prediction and the sampler's
variance and clipping.

The workdir gets the config of ``--config`` with the model, data size, noise
process and sampler keys set from the folder (the keys that differ from the file
are printed as the overrides every later command needs), and checkpoint 0 whose
params and EMA params are the ported weights (a fresh optimizer state: training
there fine-tunes). It must hold no run yet: nothing is overwritten.

The layouts agree name for name: this project's UNet is the DDPM network that
diffusers' `UNet2DModel` ports (`unet_fields` lists the settings it refuses).
Conv kernels go from torch's ``[out, in, kh, kw]`` to flax's ``[kh, kw, in, out]``,
linear layers are transposed, the three attention projections are concatenated
into one ``qkv`` Dense. The published checkpoints pad each stride-2 conv as
TensorFlow's 'SAME' (``downsample_padding=0``), hence ``model.downsample_padding``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys

import numpy as np

from diffusion.core import checks
from diffusion.models.weights_io import read_safetensors

# UNet2DModel's defaults (diffusers' `UNet2DModel.__init__`) for keys a config.json
# may leave out; the published DDPM configs spell every one of them out.
UNET_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "downsample_padding": 1,
    "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True,
    "class_embed_type": None, "num_class_embeds": None,
}
# What this project's UNet computes, as UNet2DModel settings (key: required value).
UNET_FIXED = {
    "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 1,
    "flip_sin_to_cos": False, "mid_block_scale_factor": 1, "downsample_type": "conv",
    "upsample_type": "conv", "act_fn": "silu", "norm_eps": 1e-6, "attn_norm_num_groups": None,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None,
}
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# DDPMScheduler's defaults and how its settings map onto this project's keys.
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                      "beta_schedule": "linear", "variance_type": "fixed_small",
                      "clip_sample": True, "prediction_type": "epsilon"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "beta_tilde", "fixed_large": "beta"}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# ------------------------------------------------------------------ reading
def _read_bin(path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise checks.ConfigError(
        f"{path} is a PyTorch pickle, which needs torch to read (pip install torch); or "
        "download the model's diffusion_pytorch_model.safetensors instead") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _find(folder: str, names, subfolder: str):
  for where in (folder, os.path.join(folder, subfolder)):
    for name in names:
      if os.path.isfile(os.path.join(where, name)):
        return os.path.join(where, name)
  return None


def read_folder(folder: str) -> tuple[dict, dict, dict[str, np.ndarray]]:
  """``(unet_config, scheduler_config, weights)`` of a diffusers model folder
  (module doc); the scheduler config is ``{}`` when there is none."""
  if not os.path.isdir(folder):
    raise checks.ConfigError(f"--diffusers={folder}: no such folder (give the folder that "
                             "holds the model's config.json and weights)")
  config_file = _find(folder, ["config.json"], "unet")
  if config_file is None:
    raise checks.ConfigError(f"--diffusers={folder}: no config.json in it or in its unet/ "
                             "folder; is it a diffusers model folder?")
  with open(config_file) as f:
    unet_config = json.load(f)
  if unet_config.get("_class_name") != "UNet2DModel":
    raise checks.ConfigError(f"{config_file} describes a {unet_config.get('_class_name')!r}; "
                             "the port reads diffusers' UNet2DModel (the DDPM models)")
  weights_file = _find(os.path.dirname(config_file), WEIGHT_FILES, ".")
  if weights_file is None:
    raise checks.ConfigError(f"{os.path.dirname(config_file)} has no weights: expected "
                             f"{' or '.join(WEIGHT_FILES)}")
  weights = (read_safetensors(weights_file) if weights_file.endswith(".safetensors")
             else _read_bin(weights_file))
  scheduler_file = _find(folder, ["scheduler_config.json"], "scheduler")
  scheduler = {}
  if scheduler_file is not None:
    with open(scheduler_file) as f:
      scheduler = json.load(f)
  return unet_config, scheduler, weights


# ------------------------------------------------------------------ settings
def unet_fields(unet_config: dict) -> dict[str, dict]:
  """``{"model": {...}, "data": {...}}``: this project's config keys for a
  UNet2DModel config; `checks.ConfigError` naming the setting it cannot compute."""
  c = dict(UNET_DEFAULTS, **unet_config)
  name = "the diffusers UNet2DModel"

  def refuse(what):
    raise checks.ConfigError(f"{name} has {what}, which this project's UNet does not compute")

  for key, value in UNET_FIXED.items():
    if c[key] != value:
      refuse(f"{key}={c[key]!r} (supported: {value!r})")
  boc = [int(v) for v in c["block_out_channels"]]
  ch = boc[0]
  if any(v % ch for v in boc):
    refuse(f"block_out_channels={boc}, not multiples of the first")
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  for kinds, known in ((down, DOWN_BLOCKS), (up, UP_BLOCKS)):
    for kind in kinds:
      if kind not in known:
        refuse(f"a {kind} block (supported: {', '.join(known)})")
  attn = [DOWN_BLOCKS[k] for k in down]
  if len(down) != len(boc) or [UP_BLOCKS[k] for k in reversed(up)] != attn:
    refuse(f"up blocks {up} that do not mirror the down blocks {down}")
  size = c.get("sample_size")
  size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
  if not isinstance(size, int):
    refuse(f"sample_size={c.get('sample_size')!r} (a square image size is needed)")
  if c["out_channels"] != c["in_channels"]:
    refuse(f"out_channels={c['out_channels']} != in_channels={c['in_channels']}")
  if c["downsample_padding"] not in (0, 1):
    refuse(f"downsample_padding={c['downsample_padding']!r} (supported: 0, 1)")
  attn_channels = [boc[i] for i, a in enumerate(attn) if a] + [boc[-1]]
  head_dim = c["attention_head_dim"]
  heads = {1} if head_dim is None else {v // head_dim for v in attn_channels}
  if len(heads) != 1 or (head_dim is not None and any(v % head_dim for v in attn_channels)):
    refuse(f"attention_head_dim={head_dim} on {attn_channels} channels (one head count "
           "for every attention block is needed)")
  from diffusion.models import layers, unet  # pylint: disable=g-import-not-at-top
  model = dict(ch=ch, channel_mult=tuple(v // ch for v in boc),
               num_res_blocks=int(c["layers_per_block"]),
               attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attn) if a),
               num_heads=heads.pop(), resblock_updown=False, resamp_with_conv=True,
               downsample_padding=int(c["downsample_padding"]), scale_shift_norm=False,
               skip_rescale=False, embedding="sinusoidal", time_scale=1.0, num_classes=None)
  net = unet.UNet(**model)
  groups = {v: layers.norm_groups(v) for v in sorted(net._norm_channels())}  # pylint: disable=protected-access
  if any(g != c["norm_num_groups"] for g in groups.values()):
    refuse(f"norm_num_groups={c['norm_num_groups']} (this UNet's GroupNorms have min(32, C/4) "
           f"groups: {groups} for C channels)")
  return {"model": model, "data": dict(image_size=size, channels=int(c["in_channels"]))}


def scheduler_fields(scheduler: dict) -> dict[str, dict]:
  """``{"diffusion": {...}, "sample": {...}}`` for a DDPMScheduler config."""
  s = dict(SCHEDULER_DEFAULTS, **scheduler)

  def refuse(what, supported):
    raise checks.ConfigError(f"the diffusers scheduler has {what}; supported: {supported}")

  if s.get("trained_betas") is not None:
    refuse("trained_betas (a table of its own)", "beta_schedule linear or squaredcos_cap_v2")
  if s["beta_schedule"] == "squaredcos_cap_v2":
    schedule = "cosine"
  elif s["beta_schedule"] == "linear" and np.allclose([s["beta_start"], s["beta_end"]],
                                                      [1e-4, 0.02], rtol=1e-6):
    schedule = "linear"
  else:
    refuse(f"beta_schedule={s['beta_schedule']!r} from {s['beta_start']} to {s['beta_end']}",
           "linear from 0.0001 to 0.02 (DDPM), squaredcos_cap_v2")
  if s["prediction_type"] not in PREDICTIONS:
    refuse(f"prediction_type={s['prediction_type']!r}", ", ".join(PREDICTIONS))
  if s["variance_type"] not in VARIANCES:
    refuse(f"variance_type={s['variance_type']!r}", ", ".join(VARIANCES))
  return {"diffusion": dict(type="discrete", schedule=schedule,
                            num_steps=int(s["num_train_timesteps"]),
                            prediction=PREDICTIONS[s["prediction_type"]]),
          "sample": dict(variance=VARIANCES[s["variance_type"]],
                         clip_denoised=bool(s["clip_sample"]))}


# ------------------------------------------------------------------ weights
_TOP = {"conv_in": "conv_in", "temb_dense0": "time_embedding.linear_1",
        "temb_dense1": "time_embedding.linear_2", "norm_out": "conv_norm_out",
        "conv_out": "conv_out", "mid_attn": "mid_block.attentions.0"}
_INNER = {"emb_proj": "time_emb_proj", "skip": "conv_shortcut", "norm": "group_norm",
          "downsample": "downsamplers.0", "upsample": "upsamplers.0"}
# Attention projections: current diffusers names, then those of checkpoints
# saved before diffusers 0.15 (which diffusers itself still reads).
_PROJECTIONS = (("to_q", "to_k", "to_v", "to_out.0"), ("query", "key", "value", "proj_attn"))


def diffusers_module(name: str, levels: int) -> str:
  """The diffusers module of one of this UNet's modules (``down1_attn0/qkv`` ->
  ``down_blocks.1.attentions.0.qkv``; the qkv / proj_out leaves are `_attention`'s)."""
  first, *rest = name.split("/")
  found = re.fullmatch(r"(down|up)(\d+)_(res|attn|downsample|upsample)(\d*)", first)
  if first in _TOP:
    base = _TOP[first]
  elif re.fullmatch(r"mid_res\d", first):
    base = f"mid_block.resnets.{first[-1]}"
  elif found:
    side, level, kind, index = found.groups()
    block = int(level) if side == "down" else levels - 1 - int(level)
    part = {"res": f"resnets.{index}", "attn": f"attentions.{index}"}.get(kind, _INNER.get(kind))
    base = f"{side}_blocks.{block}.{part}"
  else:
    raise KeyError(f"no diffusers name for UNet module {name}")
  return ".".join([base] + [_INNER.get(part, part) for part in rest])


def _torch_to_flax(weight: np.ndarray, target_ndim: int) -> np.ndarray:
  if weight.ndim == 4 and target_ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
    return weight.transpose(2, 3, 1, 0)
  if weight.ndim == 4:  # a 1x1 conv read as a Dense (conv_shortcut)
    return weight[:, :, 0, 0].T
  return weight.T if weight.ndim == 2 else weight


def convert(weights: dict[str, np.ndarray], target: dict, levels: int) -> dict:
  """This UNet's params (the nested dict of `target`, arrays or ShapeDtypeStructs)
  from a UNet2DModel state dict. Every parameter must be found with its shape
  and every weight used; `checks.ConfigError` otherwise."""
  from diffusion.modes.export import unflatten_params  # pylint: disable=g-import-not-at-top
  from diffusion.run.checkpoint import named_leaves  # pylint: disable=g-import-not-at-top
  used, flat = set(), {}

  def take(key):
    if key not in weights:
      raise checks.ConfigError(f"the diffusers weights have no {key} (have e.g. "
                               f"{sorted(weights)[:3]}); is the folder's config.json theirs?")
    used.add(key)
    return np.asarray(weights[key], np.float32)

  for name, leaf in named_leaves(target).items():
    module, kind = name.rsplit("/", 1)
    src = diffusers_module(module, levels)
    suffix = "bias" if kind == "bias" else "weight"
    if src.endswith(".qkv"):
      base = src[:-4]
      names = next((p for p in _PROJECTIONS if f"{base}.{p[0]}.weight" in weights),
                   _PROJECTIONS[0])
      value = np.concatenate([_torch_to_flax(take(f"{base}.{p}.{suffix}"), len(leaf.shape))
                              for p in names[:3]], axis=-1)
    else:
      if src.endswith(".proj_out"):
        base = src[:-9]
        out = next((p[3] for p in _PROJECTIONS if f"{base}.{p[3]}.weight" in weights),
                   _PROJECTIONS[0][3])
        src = f"{base}.{out}"
      value = _torch_to_flax(take(f"{src}.{suffix}"), len(leaf.shape))
    if value.shape != tuple(leaf.shape):
      raise checks.ConfigError(f"{name}: the diffusers weight has shape {value.shape}, this "
                               f"UNet's {tuple(leaf.shape)}")
    flat[name] = value
  unused = sorted(set(weights) - used)
  if unused:
    raise checks.ConfigError(f"{len(unused)} diffusers weights have no place in this UNet, "
                             f"e.g. {unused[:3]}")
  return unflatten_params(flat)


# ------------------------------------------------------------------ the command
def _define_flags(values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("diffusers", None, "a diffusers UNet2DModel folder (config.json + "
                      "weights)", flag_values=values)
  flags.DEFINE_string("workdir", None, "the new workdir (must hold no run)", flag_values=values)


def _set(config, section: str, fields: dict) -> list[str]:
  """Sets ``config.<section>.<key>`` for `fields`; returns the overrides (flags) of the
  keys whose value changed."""
  changed = []
  for key, value in fields.items():
    old = config[section][key]
    old = tuple(old) if isinstance(old, list) else old
    if old != value:
      config[section][key] = value
      shown = repr(value) if isinstance(value, tuple) else value
      changed.append(shlex.quote(f"--config.{section}.{key}={shown}"))
  return changed


def port(config, folder: str, workdir: str) -> list[str]:
  """Writes `workdir` (module doc) from the diffusers `folder`; returns the
  ``--config.*`` overrides that later commands in `workdir` need."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from diffusion import experiment  # pylint: disable=g-import-not-at-top
  from diffusion.run import checkpoint, console, resume  # pylint: disable=g-import-not-at-top
  from diffusion.run.workdir import Workdir  # pylint: disable=g-import-not-at-top
  from diffusion.train import state as ts  # pylint: disable=g-import-not-at-top

  wd = Workdir(workdir)
  if wd.config_file.exists() or wd.checkpoints_dir.exists():
    raise checks.ConfigError(f"--workdir={workdir} holds a run already (config.json or "
                             "checkpoints/); port into a new folder")
  unet_config, scheduler, weights = read_folder(folder)
  overrides = []
  with checks.config_errors():
    for section, fields in {**unet_fields(unet_config), **scheduler_fields(scheduler)}.items():
      overrides += _set(config, section, fields)
    exp = experiment.build(config)
  levels = len(config.model.channel_mult)
  params = convert(weights, exp.abstract_state().params, levels)
  state = ts.create(exp.state_key, lambda _: jax.tree.map(jax.numpy.asarray, params), exp.tx)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  with checkpoint.Checkpointer(wd.checkpoints_dir, config.train.keep_checkpoints) as ckpt:
    ckpt.save(0, state, {"epoch": 0, "position": 0})
  resume.write_config(config, workdir)
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  console.echo(f"port: {folder} -> {workdir}: {n:,} parameters as checkpoint 0 (params and EMA)")
  return overrides


def main(argv=None) -> int:
  """``python -m diffusion.port --diffusers DIR --config configs/x.py --workdir W``."""
  from diffusion import main as entry  # pylint: disable=g-import-not-at-top
  from diffusion.run import cli  # pylint: disable=g-import-not-at-top
  args = cli.parse(sys.argv[1:] if argv is None else argv, _define_flags,
                   "python -m diffusion.port", required=("config", "diffusers", "workdir"))
  try:
    overrides = port(args.config, args.diffusers, args.workdir)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    return entry.report(e)
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_file = config_flags.get_config_filename(args["config"])
  command = " ".join(["python -m diffusion.main", f"--config {config_file}",
                      f"--workdir {args.workdir}", "--mode sample", *overrides])
  print(f"sample it with:\n  {command}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
