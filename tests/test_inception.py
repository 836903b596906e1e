"""FID Inception-v3: architecture size, preprocessing, inference-mode BN, weight I/O, converter.

The real FID weights cannot be downloaded here, so the weights are random
(drawn from a PRNGKey; BN statistics non-trivial so that using them matters).
Flax's own ``init`` of this 24M-parameter net takes ~45 s on CPU, so the
random variables are drawn as one normal vector and cut to the model's shapes.
"""
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from diffusion.models import inception as inc


def _conv_specs():
  """(in, out, kh, kw) of every conv of pytorch-fid's FIDInceptionV3, written out by hand."""
  specs = [(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]
  for c_in, pool in ((192, 32), (256, 64), (288, 64)):  # Mixed_5b..5d
    specs += [(c_in, 64, 1, 1), (c_in, 48, 1, 1), (48, 64, 5, 5), (c_in, 64, 1, 1),
              (64, 96, 3, 3), (96, 96, 3, 3), (c_in, pool, 1, 1)]
  specs += [(288, 384, 3, 3), (288, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]  # Mixed_6a
  for c7 in (128, 160, 160, 192):  # Mixed_6b..6e
    specs += [(768, 192, 1, 1), (768, c7, 1, 1), (c7, c7, 1, 7), (c7, 192, 7, 1),
              (768, c7, 1, 1), (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1), (c7, 192, 1, 7),
              (768, 192, 1, 1)]
  specs += [(768, 192, 1, 1), (192, 320, 3, 3), (768, 192, 1, 1), (192, 192, 1, 7),
            (192, 192, 7, 1), (192, 192, 3, 3)]  # Mixed_7a
  for c_in in (1280, 2048):  # Mixed_7b, 7c
    specs += [(c_in, 320, 1, 1), (c_in, 384, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1),
              (c_in, 448, 1, 1), (448, 384, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1),
              (c_in, 192, 1, 1)]
  return specs


def _random_variables(seed=0):
  shapes = inc.variable_shapes()
  total = sum(int(np.prod(s)) for s in shapes.values())
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (total,)), np.float32)
  flat, i = {}, 0
  for key, shape in shapes.items():
    n = int(np.prod(shape))
    v = z[i:i + n].reshape(shape)
    i += n
    name = key.rsplit("/", 1)[1]
    if name == "kernel":  # He scaling keeps activations O(1) through 94 layers
      v = v * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ("scale", "var"):
      v = 1.0 + 0.2 * np.tanh(v)
    else:  # bias, mean
      v = 0.1 * v
    flat[key] = v.astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def variables():
  return _random_variables()


@pytest.fixture(scope="module")
def features(variables):
  return inc.feature_fn(variables, batch_size=2)


def test_parameter_count_matches_layer_list():
  shapes = inc.variable_shapes()
  count = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("params/"))
  specs = _conv_specs()
  assert len(specs) == 94 and sum(k.endswith("/conv/kernel") for k in shapes) == 94
  by_hand = sum(kh * kw * i * o + 2 * o for i, o, kh, kw in specs) + 2048 * 1008 + 1008
  assert count == by_hand == 23_850_960
  # torchvision's inception_v3 without aux logits (1000 classes) has 23,834,568
  # parameters; 8 more classes add 8 * (2048 + 1).
  assert count == 23_834_568 + 8 * 2049
  bn_stats = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("batch_stats/"))
  assert bn_stats == 2 * sum(o for _, o, _, _ in specs)


def test_avg_pool_excludes_padding():
  # FIDInceptionA/C/E_1 average only pixels inside the image: a constant stays constant.
  out = np.asarray(inc._avg_pool_3x3(np.ones((1, 4, 4, 2), np.float32)))
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_shapes_grayscale_and_batch_independence(features):
  rng = np.random.default_rng(0)
  a, b, c = rng.uniform(-1, 1, (3, 1, 32, 32, 1)).astype(np.float32)
  pool, logits = features(np.concatenate([a, b]))
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and pool.dtype == np.float64
  assert np.all(np.isfinite(pool)) and pool.std() > 1e-3  # not a degenerate all-zero output
  # Grayscale is tiled to RGB inside the model: same numbers as explicit tiling.
  pool_rgb, logits_rgb = features(np.tile(np.concatenate([a, b]), (1, 1, 1, 3)))
  np.testing.assert_allclose(pool, pool_rgb, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, logits_rgb, rtol=1e-5, atol=1e-5)
  # Inference-mode BN: example 0 is unaffected by its batch mate; a third image goes
  # through the zero-padded last batch and matches its value computed in a full batch.
  pool_ac, _ = features(np.concatenate([a, c]))
  np.testing.assert_allclose(pool_ac[0], pool[0], rtol=1e-5, atol=1e-6)
  assert np.abs(pool_ac[1] - pool[1]).max() > 1e-3
  pool_abc, _ = features(np.concatenate([a, b, c]))
  assert pool_abc.shape == (3, 2048)
  np.testing.assert_allclose(pool_abc, np.concatenate([pool, pool_ac[1:]]), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_and_missing_key(variables, tmp_path):
  path = str(tmp_path / "inception.npz")
  inc.save_params(path, variables)
  loaded = inc.load_params(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  with np.load(path) as data:
    flat = {k: data[k] for k in data.files}
  assert "batch_stats/Mixed_7c/branch_pool/bn/var" in flat  # the documented key format
  del flat["params/Mixed_6c/branch7x7dbl_4/conv/kernel"]
  broken = str(tmp_path / "broken.npz")
  np.savez(broken, **flat)
  with pytest.raises(KeyError, match=r"broken\.npz.*params/Mixed_6c/branch7x7dbl_4/conv/kernel"):
    inc.load_params(broken)


def _torch_layout(variables):
  """A fake pytorch-fid state_dict: torchvision names, OIHW conv weights, [out, in] fc."""
  bn = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
  state = {}
  for key, v in traverse_util.flatten_dict(variables, sep="/").items():
    _, *path, name = key.split("/")
    prefix = ".".join(path)
    if path[-1] == "conv":
      state[f"{prefix}.weight"] = np.transpose(v, (3, 2, 0, 1))
    elif path[-1] == "bn":
      state[f"{prefix}.{bn[name]}"] = v
      state[f"{prefix}.num_batches_tracked"] = np.array(0)
    else:
      state[f"fc.{'weight' if name == 'kernel' else 'bias'}"] = v.T if name == "kernel" else v
  return state


def test_converter_maps_pytorch_fid_names(variables):
  state = _torch_layout(variables)
  # Names and shapes as in pytorch-fid's FIDInceptionV3 state_dict.
  for key, shape in [("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
                     ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
                     ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7)),
                     ("Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
                     ("Mixed_7b.branch_pool.bn.running_var", (192,)),
                     ("fc.weight", (1008, 2048)), ("fc.bias", (1008,))]:
    assert state[key].shape == shape, key
  converted = inc.convert_torch_state_dict(state)
  jax.tree.map(np.testing.assert_array_equal, converted, variables)
  with pytest.raises(ValueError, match="AuxLogits.fc.weight"):
    inc.convert_torch_state_dict({**state, "AuxLogits.fc.weight": np.zeros((1000, 768))})
  state.pop("Mixed_6a.branch3x3.bn.running_mean")
  with pytest.raises(KeyError, match="batch_stats/Mixed_6a/branch3x3/bn/mean"):
    inc.convert_torch_state_dict(state)


def test_cli_without_torch_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # As if PyTorch were not installed.
  with pytest.raises(ImportError, match="needs PyTorch"):
    inc.main(["--convert", str(tmp_path / "w.pth"), "--out", str(tmp_path / "w.npz")])
