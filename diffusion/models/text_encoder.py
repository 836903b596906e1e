"""A CLIP-style causal Transformer text encoder (flax.linen), and CLIP weights for it.

    encoder, params = load_hf_folder("~/models/clip-vit-large-patch14")  # or load_params(npz)
    hidden = encoder.apply({"params": params}, ids, mask)  # float32 [B, L, width]

`TextEncoder` computes what transformers' ``CLIPTextModel(...).last_hidden_state``
computes for the same weights, ``input_ids`` and ``attention_mask``
(tests/test_text_encoder.py):

  x = token_embedding[ids] + position_embedding[:L]
  per layer:  x = x + Attention(LN1(x));  x = x + fc2(act(fc1(LN2(x))))
  out = LN_final(x)

The attention is multi-head self-attention, softmax(q k^T / sqrt(width /
num_heads)) v with q, k, v and the output projection biased, in which query i
sees key j only if j <= i (causal) and key j is a real token (``mask[b, j]``).
With right padding (what the tokenizers of `diffusion.data.tokenizers` make)
every query sees at least bos, and the real positions do not depend on the
padding at all. A query that sees no real key (a padded position before every
real token, with left padding) averages all L values uniformly, as
transformers' eager attention does (its default sdpa attention gives such rows
other values); only those positions depend on the convention.

Weights: `params_from_state_dict` converts a PyTorch ``CLIPTextModel.state_dict()``
(Linear weights are transposed: torch stores ``[out, in]``, flax ``[in, out]``);
`load_hf_folder` reads a ``save_pretrained`` folder; `save_params` /
`load_params` keep the module's fields and params in one ``.npz``. The command

    python -m diffusion.models.text_encoder --convert HF_FOLDER --out FILE.npz

converts a folder once, so that later runs need neither torch nor transformers.
"""
from __future__ import annotations

import argparse
import json
import numbers
import os
import sys
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP's sigmoid approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # The exact (erf) GELU.
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # The tanh approximation.
}
# transformers' `hidden_act` names of the activations above.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh"}
# transformers' CLIPTextConfig defaults: a save_pretrained config.json leaves out
# the keys that equal them.
HF_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
               "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
               "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
FIELDS = ("vocab_size", "width", "num_layers", "num_heads", "max_length", "mlp_dim",
          "activation", "layer_norm_eps", "dtype")
# transformers 5's CLIPTextModel keys have no prefix; those of transformers 4 (and
# of the hub's older files) and of a CLIPModel's text half start with this.
PREFIX = "text_model."
IGNORED = ("embeddings.position_ids",)  # A buffer (0..max_length-1), not a weight.
# The other weights of CLIPModel and CLIPTextModelWithProjection (e.g. SDXL's
# second text encoder) folders, which `load_hf_folder` leaves out.
OTHER_CLIP_WEIGHTS = ("text_projection.", "visual_projection.", "vision_model.", "logit_scale")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _dtype_name(dtype) -> str:
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    return repr(dtype)


def _layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
  # Two-pass variance E[(x - mean)^2], as torch's LayerNorm: the one-pass
  # E[x^2] - mean^2 loses digits on the residual stream, whose mean is not small.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


def _dense(features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02), name=name)


class SelfAttention(nn.Module):
  """Causal multi-head self-attention with a key padding mask (module doc).

  `[B, L, C]`, mask `[B, L]` bool or None -> `[B, L, C]`; the submodules
  ``query``, ``key``, ``value`` and ``out`` are biased Dense layers.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array]) -> Array:
    b, length, c = x.shape
    head_dim = c // self.num_heads
    q, k, v = (_dense(c, self.dtype, name)(x).reshape(b, length, self.num_heads, head_dim)
               for name in ("query", "key", "value"))
    key_mask = None if mask is None else mask[:, None, None, :]  # [B, heads, Lq, Lk]
    # Logits and softmax in float32, scale 1 / sqrt(head_dim); a masked logit is
    # a large negative number (not -inf), so a query with no visible key
    # averages all values instead of giving NaN.
    h = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=True)
    return _dense(c, self.dtype, "out")(h.reshape(b, length, c))


class EncoderLayer(nn.Module):
  """Pre-LN Transformer layer: x + attn(LN1(x)), then + fc2(act(fc1(LN2(x))))."""
  num_heads: int
  mlp_dim: int
  activation: str
  layer_norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array]) -> Array:
    h = _layer_norm(self.layer_norm_eps, self.dtype, "norm1")(x)
    x = x + SelfAttention(self.num_heads, self.dtype, name="attn")(h, mask)
    h = _layer_norm(self.layer_norm_eps, self.dtype, "norm2")(x)
    h = ACTIVATIONS[self.activation](_dense(self.mlp_dim, self.dtype, "fc1")(h))
    return x + _dense(x.shape[-1], self.dtype, "fc2")(h)


class TextEncoder(nn.Module):
  """CLIP's text Transformer: tokens `[B, L]` (+ mask) -> hidden states `[B, L, width]`.

  Parameters (all float32): ``token_embedding/embedding`` `[vocab_size, width]`,
  ``position_embedding`` `[max_length, width]`, ``layers_{i}`` (`EncoderLayer`:
  ``norm1``, ``attn/{query,key,value,out}``, ``norm2``, ``fc1``, ``fc2``) for
  i < num_layers, ``final_norm``.

  Attributes:
    vocab_size: number of token ids; ids are 0..vocab_size-1.
    width: the model width (CLIP ViT-L/14: 768).
    num_layers: Transformer layers.
    num_heads: attention heads; must divide width.
    max_length: learned positions; inputs have L <= max_length tokens.
    mlp_dim: hidden width of the MLPs (None: 4 * width).
    activation: the MLP's nonlinearity: "quick_gelu" (x sigmoid(1.702 x), CLIP),
      "gelu" (exact, erf) or "gelu_tanh" (tanh approximation).
    layer_norm_eps: the LayerNorms' epsilon.
    dtype: computation dtype (float32, bfloat16 or float16); parameters are
      float32 and the output is float32 either way.
  """
  vocab_size: int
  width: int
  num_layers: int
  num_heads: int
  max_length: int
  mlp_dim: Optional[int] = None
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  def __post_init__(self):
    self.validate()
    super().__post_init__()

  def validate(self) -> None:
    """Raises ValueError naming the field if this config cannot work."""
    def fail(msg):
      raise ValueError(f"TextEncoder: {msg}")

    for name in ("vocab_size", "width", "num_layers", "num_heads", "max_length"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        fail(f"{name} must be an int >= 1, got {value!r}")
    if self.width % self.num_heads:
      fail(f"num_heads={self.num_heads} must divide width={self.width}")
    if self.mlp_dim is not None and (not _is_int(self.mlp_dim) or self.mlp_dim < 1):
      fail(f"mlp_dim must be None (4 * width) or an int >= 1, got {self.mlp_dim!r}")
    if self.activation not in ACTIVATIONS:
      fail(f"activation={self.activation!r} is unknown; valid: {tuple(ACTIVATIONS)}")
    eps = self.layer_norm_eps
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps > 0:
      fail(f"layer_norm_eps must be a float > 0, got {eps!r}")
    if _dtype_name(self.dtype) not in DTYPES:
      fail(f"dtype={_dtype_name(self.dtype)} is not supported; valid: {DTYPES}")

  @property
  def hidden_dim(self) -> int:
    """The MLP width: `mlp_dim`, or 4 * width when it is None."""
    return self.mlp_dim or 4 * self.width

  def fields(self) -> dict:
    """The fields as JSON values (dtype by name): ``TextEncoder(**fields)`` rebuilds it."""
    out = {name: getattr(self, name) for name in FIELDS}
    out["dtype"] = _dtype_name(self.dtype)
    return out

  def _check_inputs(self, tokens, mask):
    if tokens.ndim != 2:
      raise ValueError(f"TextEncoder: tokens must be [B, L], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"TextEncoder: tokens must be integer ids, got dtype {tokens.dtype}")
    length = tokens.shape[1]
    if not 1 <= length <= self.max_length:
      raise ValueError(f"TextEncoder: {length} tokens per row; the encoder has positions for "
                       f"1..max_length={self.max_length}")
    if mask is not None:
      if mask.shape != tokens.shape:
        raise ValueError(f"TextEncoder: mask has shape {mask.shape}, tokens {tokens.shape}; "
                         "they must be equal")
      if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)):
        raise ValueError(f"TextEncoder: mask must be bool (True = a real token) or 0/1 ints, "
                         f"got dtype {mask.dtype}")
    if not isinstance(tokens, jax.core.Tracer):  # Concrete ids (not under jit): check them.
      values = np.asarray(tokens)
      low, high = int(values.min()), int(values.max())
      if low < 0 or high >= self.vocab_size:
        raise ValueError(f"TextEncoder: token ids must lie in [0, vocab_size={self.vocab_size}), "
                         f"got ids from {low} to {high}")

  @nn.compact
  def __call__(self, tokens: Array, mask: Optional[Array] = None) -> Array:
    """`tokens` int `[B, L]`, `mask` bool `[B, L]` (True = a real token; None = all
    real) -> float32 `[B, L, width]`."""
    tokens = jnp.asarray(tokens)
    mask = None if mask is None else jnp.asarray(mask)
    self._check_inputs(tokens, mask)
    if mask is not None:
      mask = mask.astype(bool)
    x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                 embedding_init=nn.initializers.normal(0.02), name="token_embedding")(tokens)
    positions = self.param("position_embedding", nn.initializers.normal(0.01),
                           (self.max_length, self.width), jnp.float32)
    x = x + positions[:tokens.shape[1]].astype(self.dtype)
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.hidden_dim, self.activation, self.layer_norm_eps,
                       self.dtype, name=f"layers_{i}")(x, mask)
    x = _layer_norm(self.layer_norm_eps, self.dtype, "final_norm")(x)
    return x.astype(jnp.float32)

  @staticmethod
  def pooled(hidden: Array, tokens: Array, eos_id: int) -> Array:
    """`pooled` (the module function)."""
    return pooled(hidden, tokens, eos_id)


def pooled(hidden: Array, tokens: Array, eos_id: int) -> Array:
  """CLIP's pooled output: `hidden[b, i_b]` `[B, width]` at the first position
  i_b where ``tokens[b] == eos_id`` (transformers' ``pooler_output`` for a
  config whose eos_token_id is not the legacy 2). Every row needs an eos
  (checked when `tokens` are concrete)."""
  is_eos = jnp.asarray(tokens) == eos_id
  if not isinstance(is_eos, jax.core.Tracer):
    rows = np.flatnonzero(~np.asarray(is_eos).any(axis=1))
    if rows.size:
      raise ValueError(f"pooled: rows {rows[:5].tolist()} have no eos token (id {eos_id})")
  index = jnp.argmax(is_eos, axis=1)
  return hidden[jnp.arange(hidden.shape[0]), index]


def param_count(params) -> int:
  return sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(params))


# ---------------------------------------------------------------- transformers
def _read_json(path) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def config_from_hf(hf_config) -> dict:
  """TextEncoder fields from a transformers `CLIPTextConfig`, its dict, or the path
  of its ``config.json`` (or of the folder holding it). A `CLIPConfig` (of a
  whole CLIPModel) gives its text half's fields."""
  if isinstance(hf_config, (str, os.PathLike)):
    path = os.fspath(hf_config)
    config = _read_json(os.path.join(path, "config.json") if os.path.isdir(path) else path)
  elif hasattr(hf_config, "to_dict"):
    config = hf_config.to_dict()
  elif isinstance(hf_config, Mapping):
    config = dict(hf_config)
  else:
    raise ValueError(f"config_from_hf takes a CLIPTextConfig, a dict or a config.json path, "
                     f"got {type(hf_config).__name__}")
  if config.get("model_type") == "clip" or "text_config" in config:
    text = config.get("text_config") or {}
    config = text.to_dict() if hasattr(text, "to_dict") else dict(text)
  model_type = config.get("model_type", "clip_text_model")
  if model_type != "clip_text_model":
    raise ValueError(f"config_from_hf: model_type={model_type!r}; a CLIP text model's is "
                     "'clip_text_model' (or 'clip' for a whole CLIPModel)")
  config = {**HF_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
  act = config["hidden_act"]
  if act not in HF_ACTIVATIONS:
    raise ValueError(f"config_from_hf: hidden_act={act!r} is not supported; valid: "
                     f"{tuple(HF_ACTIVATIONS)}")
  return dict(vocab_size=config["vocab_size"], width=config["hidden_size"],
              num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
              max_length=config["max_position_embeddings"], mlp_dim=config["intermediate_size"],
              activation=HF_ACTIVATIONS[act], layer_norm_eps=float(config["layer_norm_eps"]))


def _torch_names(num_layers: int) -> dict[str, tuple[tuple[str, ...], bool]]:
  """state dict key (without ``text_model.``) -> (flax params path, transposed?)."""
  names = {
      "embeddings.token_embedding.weight": (("token_embedding", "embedding"), False),
      "embeddings.position_embedding.weight": (("position_embedding",), False),
      "final_layer_norm.weight": (("final_norm", "scale"), False),
      "final_layer_norm.bias": (("final_norm", "bias"), False),
  }
  for i in range(num_layers):
    torch_layer, layer = f"encoder.layers.{i}", f"layers_{i}"
    linears = [(f"self_attn.{p}_proj", ("attn", ours)) for p, ours in
               (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out"))]
    linears += [("mlp.fc1", ("fc1",)), ("mlp.fc2", ("fc2",))]
    for theirs, ours in linears:
      names[f"{torch_layer}.{theirs}.weight"] = ((layer, *ours, "kernel"), True)
      names[f"{torch_layer}.{theirs}.bias"] = ((layer, *ours, "bias"), False)
    for j in (1, 2):
      names[f"{torch_layer}.layer_norm{j}.weight"] = ((layer, f"norm{j}", "scale"), False)
      names[f"{torch_layer}.layer_norm{j}.bias"] = ((layer, f"norm{j}", "bias"), False)
  return names


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor (float() also reads bfloat16 ones).
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _expected_shape(key: str, width: int, mlp_dim: int) -> Optional[tuple[int, ...]]:
  """The torch shape of `key` in a CLIPTextModel of this width (None: embeddings,
  whose first dimension is free)."""
  if key.startswith("embeddings."):
    return None
  if key.endswith("mlp.fc1.weight"):
    return (mlp_dim, width)
  if key.endswith("mlp.fc1.bias"):
    return (mlp_dim,)
  if key.endswith("mlp.fc2.weight"):
    return (width, mlp_dim)
  if key.endswith("_proj.weight"):
    return (width, width)
  return (width,)


def params_from_state_dict(state_dict: Mapping[str, Any], num_layers: int) -> dict:
  """The TextEncoder params of a PyTorch ``CLIPTextModel.state_dict()``.

  Keys are transformers 5's (``embeddings.token_embedding.weight``,
  ``encoder.layers.0.self_attn.q_proj.weight``, ..., ``final_layer_norm.bias``)
  or carry the ``text_model.`` prefix of transformers 4 and of CLIPModel; the
  ``position_ids`` buffer is ignored. Returns the params dict
  (``apply({"params": params}, ...)``) of float32 numpy arrays. Missing or
  unknown keys, or shapes that do not fit one model, raise one ValueError
  naming some of them.
  """
  if not _is_int(num_layers) or num_layers < 1:
    raise ValueError(f"params_from_state_dict: num_layers must be an int >= 1, got "
                     f"{num_layers!r}")
  weights = {}
  for key, value in state_dict.items():
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if name in IGNORED:
      continue
    if name in weights:
      raise ValueError(f"params_from_state_dict: {name!r} is in the state dict both with and "
                       f"without the {PREFIX!r} prefix")
    weights[name] = value
  names = _torch_names(num_layers)
  missing = sorted(set(names) - set(weights))
  unknown = sorted(set(weights) - set(names))
  if missing or unknown:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unknown:
      parts.append(f"{len(unknown)} unknown (e.g. {unknown[:3]})")
    raise ValueError(f"params_from_state_dict: the state dict is not that of a CLIPTextModel "
                     f"with num_layers={num_layers}: {'; '.join(parts)} keys")
  arrays = {k: _to_numpy(v) for k, v in weights.items()}
  token = arrays["embeddings.token_embedding.weight"]
  if token.ndim != 2:
    raise ValueError(f"params_from_state_dict: embeddings.token_embedding.weight has shape "
                     f"{token.shape}; expected [vocab_size, width]")
  width = token.shape[1]
  mlp_dim = arrays["encoder.layers.0.mlp.fc1.weight"].shape[0]
  params: dict = {}
  for key, (path, transpose) in names.items():
    value = arrays[key]
    expected = _expected_shape(key, width, mlp_dim)
    ok = (value.ndim == 2 and value.shape[1] == width) if expected is None else (
        value.shape == expected)
    if not ok:
      needs = list(expected) if expected else f"[n, {width}]"
      raise ValueError(f"params_from_state_dict: {key} has shape {list(value.shape)}; with "
                       f"width {width} and an MLP of {mlp_dim} it must be {needs}")
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(value.T) if transpose else value
  return params


def _check_params(module: TextEncoder, params, source: str) -> None:
  """Raises ValueError if `params` do not have `module`'s tree and shapes."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  target = jax.eval_shape(module.init, jax.random.key(0), tokens)["params"]
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(target)}
  have = {jax.tree_util.keystr(p): tuple(np.shape(v))
          for p, v in jax.tree_util.tree_leaves_with_path(params)}
  if want != have:
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    shown = ", ".join(f"{k}: {have.get(k)} (needs {want.get(k)})" for k in diff[:3])
    raise ValueError(f"{source}: the weights do not fit TextEncoder({module.fields()}): "
                     f"{len(diff)} params differ, e.g. {shown}")


def _read_weights(folder: str) -> dict:
  safetensors = os.path.join(folder, "model.safetensors")
  index = os.path.join(folder, "model.safetensors.index.json")
  pickle = os.path.join(folder, "pytorch_model.bin")
  if os.path.isfile(safetensors) or os.path.isfile(index):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:  # The project's own reader needs no package.
      from diffusion.models import weights_io  # pylint: disable=g-import-not-at-top
      load_file = weights_io.read_safetensors
    if os.path.isfile(safetensors):
      return dict(load_file(safetensors))
    shards = sorted(set(_read_json(index)["weight_map"].values()))
    weights = {}
    for shard in shards:
      weights.update(load_file(os.path.join(folder, shard)))
    return weights
  if os.path.isfile(pickle):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f"{pickle} is a PyTorch pickle, which needs torch to read; or save the "
                       "model with safe_serialization=True (model.safetensors)") from None
    return dict(torch.load(pickle, map_location="cpu", weights_only=True))
  raise FileNotFoundError(f"{folder} has no model.safetensors, model.safetensors.index.json "
                          "or pytorch_model.bin")


def load_hf_folder(folder) -> tuple[TextEncoder, dict]:
  """(TextEncoder, params) of a transformers ``save_pretrained`` folder: its
  ``config.json`` and ``model.safetensors`` (sharded or not; read without torch)
  or ``pytorch_model.bin`` (needs torch). A CLIPModel's or a
  CLIPTextModelWithProjection's folder gives its text model (the projections
  and the vision model are left out: `OTHER_CLIP_WEIGHTS`)."""
  folder = os.path.expanduser(os.fspath(folder))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"load_hf_folder: no such folder: {folder}")
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"load_hf_folder: {folder} has no config.json (a transformers "
                            "save_pretrained folder has one)")
  config = _read_json(config_path)
  module = TextEncoder(**config_from_hf(config))
  weights = {k: v for k, v in _read_weights(folder).items()
             if not k.startswith(OTHER_CLIP_WEIGHTS)}
  params = params_from_state_dict(weights, module.num_layers)
  _check_params(module, params, f"load_hf_folder({folder})")
  return module, params


# ------------------------------------------------------------------ npz files
def from_fields(fields: Mapping[str, Any]) -> TextEncoder:
  """The TextEncoder of `TextEncoder.fields()` (dtype given by name, e.g. "bfloat16")."""
  fields = dict(fields)
  if isinstance(fields.get("dtype"), str):
    if fields["dtype"] not in DTYPES:
      raise ValueError(f"TextEncoder: dtype={fields['dtype']} is not supported; valid: {DTYPES}")
    fields["dtype"] = getattr(jnp, fields["dtype"])
  return TextEncoder(**fields)


def _fields_of(module_fields) -> dict:
  if isinstance(module_fields, TextEncoder):
    return module_fields.fields()
  return from_fields(module_fields).fields()  # Validates them.


def save_params(path, module_fields, params) -> None:
  """Writes `params` and the TextEncoder's fields (a TextEncoder or its fields
  dict) into one ``.npz``: an array ``params/<path>`` per parameter (path parts
  joined by "/") and ``fields``, the fields as a JSON string."""
  fields = _fields_of(module_fields)
  _check_params(from_fields(fields), params, f"save_params({path})")
  flat = {"fields": np.array(json.dumps(fields, sort_keys=True))}
  for keys, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    flat["params/" + "/".join(str(k.key) for k in keys)] = np.asarray(value, np.float32)
  with open(path, "wb") as f:  # A file object: numpy adds no ".npz" to the name.
    np.savez(f, **flat)


def load_params(path) -> tuple[TextEncoder, dict]:
  """(TextEncoder, params) of a `save_params` file."""
  with np.load(path, allow_pickle=False) as data:
    if "fields" not in data.files:
      raise ValueError(f"load_params: {path} has no 'fields' entry; it was not written by "
                       "text_encoder.save_params")
    fields = json.loads(str(data["fields"]))
    params: dict = {}
    for name in data.files:
      if not name.startswith("params/"):
        continue
      *parents, leaf = name.split("/")[1:]
      node = params
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = data[name]
  module = from_fields(fields)
  _check_params(module, params, f"load_params({path})")
  return module, params


# ------------------------------------------------------------------ the command
def main(argv=None) -> int:
  """``python -m diffusion.models.text_encoder --convert HF_FOLDER --out FILE.npz``."""
  parser = argparse.ArgumentParser(
      prog="python -m diffusion.models.text_encoder",
      description="Converts a transformers CLIPTextModel (or CLIPModel) save_pretrained folder "
                  "into a TextEncoder .npz (load_params reads it).")
  parser.add_argument("--convert", required=True, metavar="HF_FOLDER",
                      help="the folder with config.json and the weights")
  parser.add_argument("--out", required=True, metavar="FILE.npz", help="the file to write")
  args = parser.parse_args(argv)
  try:
    module, params = load_hf_folder(args.convert)
    save_params(args.out, module, params)
  except (OSError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(f"text_encoder: {param_count(params):,} parameters ({module.num_layers} layers, width "
        f"{module.width}) -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
