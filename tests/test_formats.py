"""Standard formats beside the project's own: the EMA export (and, in
tests/test_train_smoke.py, the uint8 ``arr_0`` samples and the no-overwrite
naming of --mode sample).

The export is made from the fixture workdir of tests/test_compat.py (a smoke
run's checkpoint 2): loaded back into a fresh model it must sample exactly
what the checkpoint's EMA parameters sample.
"""
import pathlib
import shutil

import numpy as np
import pytest

from configs import smoke
from diffusion import experiment
from diffusion.core import checks
from diffusion.dist import placement
from diffusion.modes import export
from diffusion.run import checkpoint

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "workdir_v0" / "discrete"


def test_ema_export_restores_into_a_model_that_samples_the_same(tmp_path, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(FIXTURE, workdir)
  config = smoke.get_config()
  path = export.export(config, str(workdir))
  assert path == str(workdir / "export" / "ema_000002.npz")
  with np.load(path) as f:  # Plain numpy: one array per parameter, the config, the step.
    assert "conv_in/kernel" in f.files and int(f["__step__"]) == 2
  params, loaded_config, step = export.load(path)
  assert step == 2 and loaded_config.model.ch == config.model.ch
  # The exported parameters are the checkpoint's EMA parameters, array for array.
  exp = experiment.build(config)
  with checkpoint.Checkpointer(workdir / "checkpoints", None) as ckpt:
    ema, _ = experiment.restore_ema_params(exp, ckpt, 2, placement.make_mesh())
  want = checkpoint.named_leaves(ema)
  got = checkpoint.named_leaves(params)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], np.asarray(want[name]), err_msg=name)
  # A model built from the exported config alone samples the same images.
  fresh = experiment.build(loaded_config)
  sample = fresh.sample_fn(num_samples=4)
  np.testing.assert_array_equal(np.asarray(sample(params, fresh.sample_key)),
                                np.asarray(exp.sample_fn(num_samples=4)(ema, exp.sample_key)))
  # Exporting the same step again leaves the file as it is.
  before = pathlib.Path(path).read_bytes()
  capsys.readouterr()
  assert export.export(config, str(workdir)) == path
  assert "exists already" in capsys.readouterr().err
  assert pathlib.Path(path).read_bytes() == before


def test_loading_a_file_that_is_no_export_names_it(tmp_path):
  path = tmp_path / "x.npz"
  np.savez(path, a=np.zeros(3))
  with pytest.raises(checks.ConfigError, match="is not an export of --mode export"):
    export.load(path)
