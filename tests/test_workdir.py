"""run.workdir: the workdir layout, local and gs:// (paths only: nothing is opened)."""
import json

from etils import epath
import numpy as np
import pytest

from diffusion.run import workdir as workdir_lib
from diffusion.run.workdir import Workdir


def _layout(wd):
  return {
      "config": wd.config_file, "metrics": wd.metrics_file, "wandb_id": wd.wandb_id_file,
      "wandb": wd.wandb_dir, "checkpoints": wd.checkpoints_dir, "samples": wd.samples_dir,
      "grid": wd.sample_grid(1000), "final_png": wd.final_samples(42, "png"),
      "final_npz": wd.final_samples(42, "npz"), "final_gif": wd.final_samples(42, "gif"),
      "eval": wd.eval_dir, "rounds": wd.rounds_dir, "round": wd.round_file("ddim_steps-10"),
      "round_stats": wd.round_stats("ddim_steps-10"), "results_json": wd.results("json"),
      "results_md": wd.results("md"), "bpd": wd.bpd_file,
      "reference": wd.reference_stats("inception", "test"),
  }


EXPECTED = {
    "config": "config.json", "metrics": "metrics.jsonl", "wandb_id": "wandb_id.txt",
    "wandb": "wandb", "checkpoints": "checkpoints", "samples": "samples",
    "grid": "samples/step_001000.png", "final_png": "samples/final_000042.png",
    "final_npz": "samples/final_000042.npz", "final_gif": "samples/final_000042.gif",
    "eval": "eval", "rounds": "eval/rounds", "round": "eval/rounds/ddim_steps-10.json",
    "round_stats": "eval/rounds/ddim_steps-10_stats.npz", "results_json": "eval/results.json",
    "results_md": "eval/results.md", "bpd": "eval/bpd.json",
    "reference": "eval/reference_inception_test.npz",
}


@pytest.mark.parametrize("root", ["/tmp/runs/a", "runs/a"])
def test_local_layout(root, tmp_path):
  for given in (root, epath.Path(root)):
    wd = Workdir(given)
    assert isinstance(wd.path, epath.Path) and str(wd.path) == root
    paths = _layout(wd)
    assert {k: str(p) for k, p in paths.items()} == {k: f"{root}/{v}" for k, v in EXPECTED.items()}
    assert all(isinstance(p, epath.Path) for p in paths.values())
  assert workdir_lib.is_local(root) and Workdir(root) == Workdir(epath.Path(root))


def test_gcs_layout_builds_paths_only():
  wd = Workdir("gs://bucket/run")
  paths = _layout(wd)
  assert {k: str(p) for k, p in paths.items()} == {
      k: f"gs://bucket/run/{v}" for k, v in EXPECTED.items()}
  assert not workdir_lib.is_local(wd.path) and not workdir_lib.is_local("gs://bucket/run")


def test_bad_extension():
  with pytest.raises(ValueError, match=r"ext='jpg' is not valid; valid: png, npz, gif"):
    Workdir("/w").final_samples(1, "jpg")
  with pytest.raises(ValueError, match=r"ext='csv' is not valid; valid: json, md"):
    Workdir("/w").results("csv")


def test_read_write_helpers(tmp_path):
  wd = Workdir(tmp_path / "w")
  workdir_lib.write_json(wd.round_file("ddpm"), {"b": 1, "a": [1.5, None]}, indent=2)
  assert workdir_lib.read_json(wd.round_file("ddpm")) == {"b": 1, "a": [1.5, None]}
  assert wd.round_file("ddpm").read_text() == json.dumps({"b": 1, "a": [1.5, None]}, indent=2)
  assert sorted(p.name for p in wd.rounds_dir.iterdir()) == ["ddpm.json"]  # No .tmp left.
  arrays = {"x": np.arange(6.0).reshape(2, 3), "name": np.asarray("inception:/w")}
  workdir_lib.save_npz(wd.final_samples(3, "npz"), **arrays)
  loaded = workdir_lib.load_npz(wd.final_samples(3, "npz"))
  assert set(loaded) == {"x", "name"} and str(loaded["name"]) == "inception:/w"
  np.testing.assert_array_equal(loaded["x"], arrays["x"])
  with np.load(str(wd.final_samples(3, "npz"))) as f:  # The same file np.savez(path) writes.
    np.testing.assert_array_equal(f["x"], arrays["x"])
