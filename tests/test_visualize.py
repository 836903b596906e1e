"""Diagnostic figures (`diffusion.visualize`, `diffusion.figures`): exact pixels,
layouts, nearest-neighbour indices, and the CLI end to end on digits."""
import json
import math
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from diffusion.viz import figures
from diffusion.core import schedules
from diffusion.viz import images as visualize

ROOT = pathlib.Path(__file__).resolve().parents[1]

PAD = 2


def _tile(grid, r, c, h, w):
  """Tile (r, c) of an `image_grid` with padding PAD and no upscaling."""
  y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
  return grid[y:y + h, x:x + w]


@pytest.fixture(scope="module")
def scheds():
  return {"linear": schedules.get("linear", 1000), "cosine": schedules.get("cosine", 1000)}


def test_forward_strip_first_column_is_the_image(scheds):
  # x_0 = sqrt(ab0) x + sqrt(1 - ab0) eps, so |x_0 - x| <= (1 - sqrt(ab0)) |x| +
  # sqrt(1 - ab0) |eps| per pixel; in uint8 levels (127.5 per unit) plus at most 1
  # level from rounding the two values. For linear sqrt(1 - ab0) = 0.01 (1.3 levels
  # per unit of eps), so the image is recovered to a few levels, not exactly.
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
  key = jax.random.PRNGKey(1)
  eps = np.asarray(jax.random.normal(key, images.shape))  # the documented noise draw
  grid = visualize.forward_strip(images, scheds, key, min_tile=8, padding=PAD)
  clean = visualize.to_uint8(images).astype(int)
  for i in range(len(images)):
    for s, sched in enumerate(scheds.values()):
      ab0 = float(sched.alpha_bars[0])
      bound = (1 - math.sqrt(ab0)) + math.sqrt(1 - ab0) * np.abs(eps[i]).max()
      tol = math.floor(127.5 * bound + 1)
      diff = np.abs(_tile(grid, i * len(scheds) + s, 0, 8, 8).astype(int) - clean[i])
      assert diff.max() <= tol, (i, s, diff.max(), tol)
  # The bound is tight-ish: the typical error is ~ 127.5 * 0.01 * E|eps| ~ 1 level.
  assert tol <= 7


def test_forward_strip_layout_and_shared_noise(scheds):
  images = np.random.default_rng(0).uniform(-1, 1, (3, 8, 6, 1)).astype(np.float32)
  fractions = (0.0, 0.3, 1.0)
  three = dict(scheds, again=scheds["linear"])
  grid = visualize.forward_strip(images, three, jax.random.PRNGKey(0), fractions,
                                 min_tile=1, padding=PAD)
  rows, cols = 3 * 3, len(fractions)
  assert grid.shape == (rows * (8 + PAD) + PAD, cols * (6 + PAD) + PAD, 1)
  assert grid.dtype == np.uint8
  # A schedule repeated under another name gives identical rows: one noise per image.
  for i in range(3):
    for c in range(cols):
      np.testing.assert_array_equal(_tile(grid, 3 * i, c, 8, 6), _tile(grid, 3 * i + 2, c, 8, 6))
  # Every column of one image uses the same eps: (x_t - sqrt(ab) x) / sqrt(1 - ab).
  x = visualize.forward_noised(images, scheds, jax.random.PRNGKey(0), fractions)
  eps = np.asarray(jax.random.normal(jax.random.PRNGKey(0), images.shape))
  for s, sched in enumerate(scheds.values()):
    for f, t in enumerate(visualize.forward_timesteps(1000, fractions)):
      if t == 0:
        continue
      ab = float(sched.alpha_bars[t])
      rec = (x[:, s, f] - math.sqrt(ab) * images) / math.sqrt(1 - ab)
      np.testing.assert_allclose(rec, eps, atol=1e-4)
  assert list(visualize.forward_timesteps(1000, fractions)) == [0, 300, 999]


def test_forward_strip_last_linear_column_is_pure_noise(scheds):
  # Linear T=1000: alpha_bar_999 ~ 4e-5, so x_999 = 0.006 x + ~1.0 eps: pixel std 1.
  # Sample std of n normals has SE ~ 1/sqrt(2n); n = 64*8*8 = 4096 -> 3 SE = 0.033.
  images = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 1)).astype(np.float32)
  x = visualize.forward_noised(images, scheds, jax.random.PRNGKey(2))
  last = x[:, 0, -1]
  n = last.size
  assert abs(last.std() - 1.0) < 3 / math.sqrt(2 * n)
  assert abs(last.mean()) < 3 / math.sqrt(n)
  # In the uint8 strip those values are clipped to [-1, 1]: a fraction
  # P(|Z| > 1) = 0.3173 of the pixels saturate (0 or 255); 3 SE = 3 sqrt(p(1-p)/n).
  grid = visualize.forward_strip(images, scheds, jax.random.PRNGKey(2), min_tile=8, padding=PAD)
  tiles = np.stack([_tile(grid, 2 * i, 4, 8, 8) for i in range(64)])
  p = math.erfc(1 / math.sqrt(2))
  saturated = np.mean((tiles == 0) | (tiles == 255))
  assert abs(saturated - p) < 3 * math.sqrt(p * (1 - p) / n)


def test_trajectory_strip():
  s, n = 10, 3
  rng = np.random.default_rng(0)
  tx, tx0 = rng.uniform(-1, 1, (2, s, n, 8, 8, 1)).astype(np.float32)
  grid = visualize.trajectory_strip(tx, tx0, num_columns=4, min_tile=8, padding=PAD)
  assert grid.shape == (2 * n * (8 + PAD) + PAD, 4 * (8 + PAD) + PAD, 1)
  for i in range(n):
    for c, step in enumerate([0, 3, 6, 9]):
      np.testing.assert_array_equal(_tile(grid, 2 * i, c, 8, 8), visualize.to_uint8(tx[step, i]))
      np.testing.assert_array_equal(_tile(grid, 2 * i + 1, c, 8, 8),
                                    visualize.to_uint8(tx0[step, i]))
  # Fewer steps than columns: one column per step.
  assert visualize.trajectory_strip(tx[:2], tx0[:2], min_tile=8).shape[1] == 2 * (8 + PAD) + PAD
  with pytest.raises(ValueError, match="traj_x"):
    visualize.trajectory_strip(tx, tx0[:, :2])


def test_nearest_neighbours_finds_training_images_and_orders():
  rng = np.random.default_rng(0)
  train = rng.uniform(-1, 1, (50, 4, 4, 1)).astype(np.float32)
  samples = train[[7, 23, 41]]
  idx, grid = visualize.nearest_neighbours(samples, train, k=3, min_tile=4, padding=PAD)
  assert idx.shape == (3, 3)
  np.testing.assert_array_equal(idx[:, 0], [7, 23, 41])
  brute = np.argsort(((samples[:, None] - train[None]) ** 2).reshape(3, 50, -1).sum(-1), 1)
  np.testing.assert_array_equal(idx, brute[:, :3])
  assert grid.shape == (3 * (4 + PAD) + PAD, 4 * (4 + PAD) + PAD, 1)
  np.testing.assert_array_equal(_tile(grid, 1, 0, 4, 4), visualize.to_uint8(train[23]))
  np.testing.assert_array_equal(_tile(grid, 1, 2, 4, 4), visualize.to_uint8(train[idx[1, 1]]))
  # Crafted: constant images; the sample 0.3 is 0.6, 0.8, 0.2, 0.1 from them.
  consts = np.array([0.9, -0.5, 0.1, 0.4], np.float32)[:, None, None, None] * np.ones((4, 2, 2, 1))
  sample = np.full((1, 2, 2, 1), 0.3, np.float32)
  idx, _ = visualize.nearest_neighbours(sample, consts.astype(np.float32), k=4)
  np.testing.assert_array_equal(idx, [[3, 2, 0, 1]])
  with pytest.raises(ValueError, match="k="):
    visualize.nearest_neighbours(sample, consts, k=5)


def test_schedule_plot_writes_png(tmp_path, scheds):
  path = str(tmp_path / "sub" / "schedules.png")
  visualize.schedule_plot(path, scheds, figsize=(8, 3), dpi=50)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == (400, 150)


def test_figures_end_to_end(tmp_path, capsys):
  config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "digits_ddpm.py")
  out, work = tmp_path / "figs", tmp_path / "work"
  # No samples yet: a clear error naming --mode sample.
  (work / "samples").mkdir(parents=True)
  with pytest.raises(SystemExit) as e:
    figures.main(["--config", config, "--out", str(out), "--workdir", str(work)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "--mode sample" in err and err.count("\n") == 1
  # main's command line (run.cli): a variant and overrides, bad ones in one line.
  for flags, text in ((["--config", config + ":nope"], "bad variant item 'nope'"),
                      (["--config", config, "--config.data.batch_sizz=3"],
                       "config.data.batch_sizz: no such key; did you mean batch_size?")):
    with pytest.raises(SystemExit) as e:
      figures.main([*flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and text in err, err
    assert err.count("\n") == 1

  train = figures.training_images(figures.load_config(config))
  assert train.shape == (1797, 8, 8, 1) and train.min() == -1 and train.max() == 1
  picks = np.array([5, 100, 1000])
  np.savez(work / "samples" / "final_000010.npz", images=np.zeros((2, 4, 4, 1), np.float32))
  np.savez(work / "samples" / "final_000500.npz", images=train[picks])  # the latest
  figures.main(["--config", config + ":seed=0", "--out", str(out), "--workdir", str(work),
                "--k", "2", "--config.data.batch_size=64"])
  for name in ("forward_strip.png", "schedules.png", "nearest_neighbours.png"):
    with Image.open(out / name) as im:
      assert im.format == "PNG"
  with np.load(out / "nearest_neighbours.npz") as f:
    assert f["indices"].shape == (3, 2)
    np.testing.assert_array_equal(f["distances"][:, 0], 0.0)  # each sample IS a training image
  # Several models' results: one plot and one table; a malformed --results is one line.
  res = str(ROOT / "docs" / "mnist_cpu_eval" / "results.json")
  for value, text in ((f"a={res},{res}", "is not LABEL=FILE"), (f"a={res},a={res}", "twice"),
                      (f"a={res},b=/nope.json", "'/nope.json': no such file")):
    with pytest.raises(SystemExit) as e:
      figures.main(["--config", config, "--out", str(out), "--results", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and text in err and err.count("\n") == 1, err
  figures.main(["--config", config, "--out", str(out / "cmp"), "--results", f"x={res},y={res}"])
  md = (out / "cmp" / "fid_vs_nfe.md").read_text()
  # The side-by-side FID table, then every row once per model and the shared data row once.
  assert md.startswith("| sampler | NFE | FID x | FID y |\n")
  assert md.count("| x | `") == md.count("| y | `") == 11 and md.count("| data | `data:test`") == 1
  with Image.open(out / "nearest_neighbours.png") as im:  # 8x8 tiles upscaled x4
    assert im.size == (3 * (32 + PAD) + PAD, 3 * (32 + PAD) + PAD)


def test_fid_vs_nfe_plot_draws_one_line_per_sampler_family(tmp_path):
  """From the README's MNIST results.json: DDIM's two eta settings are two lines of
  four step counts each, sorted by NFE; the probability-flow ODE (Heun) costs 2
  evaluations per step; the data row is the floor, not a line."""
  rounds = json.loads((ROOT / "docs" / "mnist_cpu_eval" / "results.json").read_text())["rounds"]
  path = tmp_path / "fid.png"
  lines = visualize.metric_vs_nfe_plot(str(path), rounds, "fid", figsize=(6, 4), dpi=50)
  assert sorted(lines) == ["ddim:eta=0", "ddim:eta=1", "ddpm", "euler_maruyama",
                           "probability_flow:ode_method=heun"]
  fid = {r["spec"]: r["fid"] for r in rounds}
  assert lines["ddim:eta=1"] == [(n, fid[f"ddim:steps={n},eta=1"]) for n in (10, 20, 50, 100)]
  assert lines["probability_flow:ode_method=heun"] == [
      (100, fid["probability_flow:steps=50,ode_method=heun"])]
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == (300, 200)
  assert visualize.sampler_family("ddim:eta=0,steps=5") == "ddim:eta=0"
  with pytest.raises(ValueError, match="no sampler rows"):
    visualize.metric_vs_nfe_plot(str(path), rounds[:1], "fid")


def test_fid_vs_nfe_plot_and_table_compare_several_models(tmp_path):
  """Two models (the README's results.json, and a copy with every sampler's FID
  raised by 1): a line per (model, sampler family) holding that model's own values;
  the shared data row is one floor and one table row; bits/dim with its standard
  error std / sqrt(n)."""
  from diffusion.viz import tables
  table = json.loads((ROOT / "docs" / "mnist_cpu_eval" / "results.json").read_text())
  other = json.loads(json.dumps(table))
  for r in other["rounds"]:
    r["fid"] += 0.0 if r["method"] == "data" else 1.0
  other["bpd"] = dict(table["bpd"], bits_per_dim=2.5, std=0.8, num_images=64)
  lines = visualize.metric_vs_nfe_plot(str(tmp_path / "c.png"),
                                       {"a": table["rounds"], "b": other["rounds"]}, "fid",
                                       figsize=(6, 4), dpi=50)
  assert len(lines) == 10 and lines["b: ddim:eta=0"] == [
      (n, v + 1.0) for n, v in lines["a: ddim:eta=0"]]
  md = tables.comparison_markdown({"a": table, "b": other}).splitlines()
  assert sum("`data:test`" in line for line in md) == 1
  assert sum(line.startswith("| b | `") for line in md) == 11
  assert "| b | `ddim:steps=10,eta=0` | 10 | 86.56 |" in "\n".join(md)
  assert md[-1].startswith("- b, step 3000: bits/dim 2.500 ± 0.100 (standard error of 64 test")
  pivot = tables.pivot_markdown({"a": table, "b": other}).splitlines()
  assert pivot[0] == "| sampler | NFE | FID a | FID b |" and len(pivot) == 2 + 11 + 2
  assert pivot[2] == "| `ddim:steps=10,eta=0` | 10 | 85.6 | 86.6 |"
  assert pivot[-2] == "| `data:test` (real images: the floor) | - | 30.6 | 30.6 |"
  assert pivot[-1].endswith("| 1.617 ± 0.039 (ddpm_vlb) | 2.500 ± 0.100 (ddpm_vlb) |")


def test_guidance_table_rates_carry_their_binomial_standard_errors():
  """`tables.guidance_markdown`: label accuracy 0.9 of 256 samples prints ± sqrt(0.9 * 0.1 /
  256) = 0.019; a text model's attribute rates use the number of prompts naming them."""
  from diffusion.viz import tables  # pylint: disable=g-import-not-at-top
  row = dict(spec="ddim:steps=50,eta=0,guidance=4", method="ddim", settings={"guidance": 4.0},
             fid=12.345, inception_score=8.5, num_samples=256, label_accuracy=0.9)
  md = tables.guidance_markdown({"rounds": [row]})
  assert "| `ddim:steps=50,eta=0,guidance=4` | 4.0 | 12.35 | 8.50 | 0.900 ± 0.019 |" in md
  text = dict(row, label_accuracy=None, prompt_agreement={
      "digit": {"agreement": 0.5, "count": 100.0, "chance": 0.1},
      "thickness": {"agreement": 0.64, "count": 25.0, "chance": 1 / 3}})
  md = tables.guidance_markdown({"rounds": [text]})
  assert "0.500 ± 0.050 | 0.640 ± 0.096 | - | - |" in md
