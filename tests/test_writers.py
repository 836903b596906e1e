"""The run's writers (run.sinks, run.redact, run.resume): wandb offline runs (config, images,
resumed id), redaction, modes.

Never contacts the network: wandb runs in "offline" mode with its home
directories under tmp_path. An offline wandb 0.31 run has no files/config.yaml
or wandb-metadata.json; its config and history are records in the run's
``run-<id>.wandb`` transaction log (LevelDB log framing of
``wandb_internal_pb2.Record`` protos), read back here by `_records`.
"""
import json
import os
import subprocess
import sys
import time

from ml_collections import config_dict
import numpy as np
from PIL import Image
import pytest

from configs import smoke
from diffusion.core import checks
from diffusion.run import redact
from diffusion.run import resume
from diffusion.run import sinks

SECRET = "sk-secret-123"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def quiet_offline_wandb(monkeypatch, tmp_path):
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_CONSOLE", "off")
  for name in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT",
               "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS"):
    monkeypatch.delenv(name, raising=False)
  home = tmp_path / "wandb_home"  # Outside the workdirs the tests walk.
  for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    monkeypatch.setenv(name, str(home / name.lower()))


def _config(mode="offline", **wandb):
  config = smoke.get_config()
  config.wandb.mode = mode
  config.wandb.project = "diffusion-tests"
  config.wandb.group = "ablation-x"
  config.wandb.tags = ("smoke", "writers")
  for key, value in wandb.items():
    config.wandb[key] = value
  return config


def _png(path):
  Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(path)
  return str(path)


def _run_dirs(workdir):
  base = os.path.join(workdir, "wandb")
  return sorted(os.path.join(base, d) for d in os.listdir(base) if d.startswith("offline-run-"))


def _records(path):
  """The Record protos of a ``.wandb`` file (LevelDB log: 32 KiB blocks)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", data[:8]
  block, pos, buf, out = 32768, 7, b"", []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # Block trailer padding.
      pos += block - pos % block
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    if pos + 7 + length > len(data):  # Still being written.
      break
    if kind == 0:  # Zero padding to the end of the block.
      pos += block - pos % block
      continue
    buf += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST.
      out.append(wandb_internal_pb2.Record.FromString(buf))
      buf = b""
  return out


def _items(items):
  """{key: value} of config/history items; nested keys ("samples", "path") nest."""
  out = {}
  for item in items:
    path = list(item.nested_key) or [item.key]
    node = out
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = json.loads(item.value_json)
  return out


def _finished_records(run_dir, timeout=30.0):
  """The records of a run once its "exit" record is on disk.

  `finish()` can return before wandb's core process has flushed the offline
  log (seen under CPU load), so wait for it rather than read a partial file.
  """
  deadline = time.time() + timeout
  while True:
    logs = [f for f in os.listdir(run_dir) if f.endswith(".wandb")]
    records = _records(os.path.join(run_dir, logs[0])) if len(logs) == 1 else []
    if any(r.WhichOneof("record_type") == "exit" for r in records) or time.time() > deadline:
      return records
    time.sleep(0.1)


def _run_contents(run_dir):
  """(config {key: value}, history [{key: value}], run record) of an offline run."""
  config, history, run = {}, [], None
  for r in _finished_records(run_dir):
    kind = r.WhichOneof("record_type")
    if kind == "config":
      config.update(_items(r.config.update))
    elif kind == "history":
      history.append(_items(r.history.item))
    elif kind == "run":
      run = r.run
      config.update(_items(r.run.config.update))
  return config, history, run


def test_offline_run_writes_config_scalars_and_image(tmp_path):
  workdir = str(tmp_path / "run_a")
  config = _config()
  resume.check_config(config, workdir, write=True)
  writer = sinks.MetricWriter(workdir, config)
  writer.write(2, {"loss": np.float32(0.5), "grad_norm": 1.5})
  writer.write_image(2, "samples", _png(tmp_path / "grid.png"))
  writer.write(4, {"loss": 0.25, "grad_norm": float("nan")})
  writer.close()

  [run_dir] = _run_dirs(workdir)
  run_id = open(os.path.join(workdir, "wandb_id.txt")).read().strip()
  assert os.path.basename(run_dir).endswith("-" + run_id)
  images = os.listdir(os.path.join(run_dir, "files", "media", "images"))
  assert len(images) == 1 and images[0].startswith("samples_2_") and images[0].endswith(".png")

  logged, history, run = _run_contents(run_dir)
  flat = redact.flatten(json.loads(config.to_json()))
  for key in ("data.batch_size", "model.ch", "model.channel_mult", "diffusion.num_steps",
              "train.num_steps", "sample.method", "wandb.mode", "wandb.tags"):
    assert logged[key] == flat[key], key
  assert set(flat) <= set(logged)
  assert (run.run_id, run.project, run.run_group) == (run_id, "diffusion-tests", "ablation-x")
  assert run.display_name == "run_a" and list(run.tags) == ["smoke", "writers"]
  rows = [h for h in history if "loss" in h]
  assert [(h["_step"], h["loss"]) for h in rows] == [(2, 0.5), (4, 0.25)]
  assert "grad_norm" not in rows[1]  # NaN -> null in metrics.jsonl, not logged.
  [image] = [h["samples"] for h in history if "samples" in h]
  assert image["_type"] == "image-file" and image["path"] == "media/images/" + images[0]
  assert [r["step"] for r in sinks.read_metrics(workdir)] == [2, 4]


def test_resumed_hook_reuses_run_id(tmp_path):
  workdir = str(tmp_path / "run_b")
  config = _config(name="my-run")
  first = sinks.WandbHook(config, True, workdir=workdir)
  first.log(2, {"step": 2, "loss": 1.0})
  first.close()
  second = sinks.WandbHook(config, True, workdir=workdir)
  second.log(4, {"step": 4, "loss": 0.5})
  second.close()
  assert first.run_id and second.run_id == first.run_id
  assert open(os.path.join(workdir, "wandb_id.txt")).read().strip() == first.run_id
  dirs = _run_dirs(workdir)
  # offline-run-<time>-<id>, or offline-run-<time>-<id>-1 within the same second.
  assert len(dirs) == 2 and all(f"-{first.run_id}" in os.path.basename(d) for d in dirs)
  assert all(_run_contents(d)[2].display_name == "my-run" for d in dirs)
  # Another workdir is another run.
  other = sinks.WandbHook(config, True, workdir=str(tmp_path / "run_c"))
  other.close()
  assert other.run_id != first.run_id
  # Not process 0 (enabled=False): nothing is started or written.
  idle = sinks.WandbHook(config, False, workdir=str(tmp_path / "run_d"))
  assert not idle.active and not os.path.exists(tmp_path / "run_d")


def test_eval_run_is_its_own_job_on_the_checkpoint_step_axis(tmp_path, monkeypatch):
  """A study's runs (issue 14): train and eval are two wandb runs of one group and
  name, job_type train / eval; eval rows carry their checkpoint's step as eval/step
  (define_metric), so evaluating step 2 after step 4 keeps both rows; a sweep
  agent's run id (WANDB_SWEEP_ID + WANDB_RUN_ID) is the training run's id."""
  workdir = str(tmp_path / "run_e")
  config = _config(name="v1")
  train = sinks.WandbHook(config, True, workdir=workdir)
  train.log(4, {"loss": 1.0})
  train.close()
  for step in (4, 2):
    ev = sinks.WandbHook(config, True, workdir=workdir, job_type="eval")
    ev.log(step, {"eval/ddim/fid": 10.0 * step})
    ev.close()
  assert ev.run_id != train.run_id
  assert open(os.path.join(workdir, "wandb_id_eval.txt")).read().strip() == ev.run_id
  runs = {}
  for d in _run_dirs(workdir):
    _, history, run = _run_contents(d)
    runs.setdefault(run.run_id, []).append((run, history))
  (train_run, _), = runs[train.run_id]
  assert (train_run.job_type, train_run.run_group, train_run.display_name) == (
      "train", "ablation-x", "v1")
  evals = runs[ev.run_id]
  assert all(r.job_type == "eval" and r.display_name == "v1" for r, _ in evals)
  rows = [(h["eval/step"], h["eval/ddim/fid"]) for _, hist in evals for h in hist
          if "eval/step" in h]
  assert rows == [(4, 40.0), (2, 20.0)]
  monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
  monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
  assert sinks.wandb_run_id(str(tmp_path / "run_f")) == "agentrun"
  assert open(tmp_path / "run_f" / "wandb_id.txt").read().strip() == "agentrun"
  assert sinks.wandb_run_id(str(tmp_path / "run_f"), "eval") != "agentrun"
  with pytest.raises(ValueError, match="job_type='sample' is not one of train, eval"):
    sinks.WandbHook(config, True, workdir=workdir, job_type="sample")


def test_redact():
  secrets = frozenset({SECRET})
  tree = {"wandb": {"api_key": "abc", "API-Key": "x", "apiKey": "y", "name": "n"},
          "hub": {"HF_TOKEN": "t", "db_password": "p", "credentials": {"a": 1},
                  "client_secret": "s", "empty_token": ""},
          "notes": f"uses {SECRET} here", "exact": SECRET, "tags": ["a", SECRET],
          "lr": 1e-3, "name": "keyboard"}
  out = redact.redact(tree, secrets)
  r = redact.REDACTED
  assert out["wandb"] == {"api_key": r, "API-Key": r, "apiKey": r, "name": "n"}
  assert out["hub"] == {"HF_TOKEN": r, "db_password": r, "credentials": {"a": 1},
                        "client_secret": r, "empty_token": ""}
  assert (out["notes"], out["exact"], out["tags"]) == (r, r, ["a", r])
  assert (out["lr"], out["name"]) == (1e-3, "keyboard")
  assert tree["wandb"]["api_key"] == "abc"  # A copy.
  # Values are masked, not keys that merely look like credentials: hyper-parameters
  # named like tokens stay comparable (and the resume check sees them change).
  params = {"token_dim": 512, "num_tokens": 77, "tokenizer": "bpe", "secretary": "ok",
            "model": {"text": {"max_tokens": 64, "use_secret_sauce": True}},
            "hub": {"token": "abc", "auth_token": "x", "secretKey": "y"},
            "notes": "hf_" + "a1B2" * 9, "url": "ghp_" + "Z" * 36, "commit": "a" * 40}
  out = redact.redact(params, frozenset())
  assert out["token_dim"] == 512 and out["num_tokens"] == 77 and out["tokenizer"] == "bpe"
  assert out["secretary"] == "ok" and out["model"] == params["model"]
  assert out["hub"] == {"token": r, "auth_token": r, "secretKey": r}
  assert (out["notes"], out["url"]) == (r, r)  # Credential formats, under innocent keys.
  assert out["commit"] == "a" * 40  # A git hash is not a credential format.
  env = {"WANDB_API_KEY": "k" * 40, "MY_TOKEN": "tok-123456", "GH_SECRET": "shh!!",
         "DB_PASSWORD": "hunter22", "PATH": "/usr/bin", "SOME_KEY": "1"}
  assert redact.secret_values(env) == {"k" * 40, "tok-123456", "shh!!", "hunter22"}
  holds = lambda *argv: redact.argv_holds_secret(list(argv), secrets)
  assert holds("--config.wandb.api_key=abc") and holds("--config.hub.token", "abc")
  assert holds("--workdir", f"/runs/{SECRET}") and holds(f"--config.wandb.notes={SECRET}")
  assert not holds("--config.wandb.project=p", "--workdir", "/runs/a")
  assert not holds("--config.wandb.api_key=")


def test_secret_never_lands_under_workdir(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_API_KEY", SECRET)
  # wandb records sys.argv in its run metadata.
  monkeypatch.setattr(sys, "argv", [sys.argv[0], f"--config.wandb.api_key={SECRET}"])
  workdir = str(tmp_path / "run_s")
  config = _config()
  config.unlock()
  config.wandb.api_key = SECRET
  config.wandb.notes = f"key={SECRET}"  # Not a credential key: caught by value.
  # The values wandb.init takes besides the config leave the process too.
  config.wandb.name, config.wandb.group, config.wandb.tags = SECRET, SECRET, ("ok", SECRET)
  config.data.credentials = config_dict.ConfigDict({"hub": {"Token": SECRET}, "user": "me"})
  config.lock()
  resume.check_config(config, workdir, write=True)
  resume.check_config(config, workdir, write=False)  # Resumable under its own redaction.
  writer = sinks.MetricWriter(workdir, config)
  writer.write(2, {"loss": 0.5, "auth_token": SECRET, "note": SECRET})
  writer.write_image(2, "samples", _png(tmp_path / "grid.png"))
  writer.close()

  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["wandb"]["api_key"] == redact.REDACTED
  assert saved["data"]["credentials"] == {"hub": {"Token": redact.REDACTED},
                                         "user": redact.REDACTED}
  assert saved["wandb"]["notes"] == redact.REDACTED
  assert saved["wandb"]["name"] == saved["wandb"]["group"] == redact.REDACTED
  assert sinks.read_metrics(workdir)[0]["auth_token"] == redact.REDACTED
  assert _run_contents(_run_dirs(workdir)[0])[0]["wandb.api_key"] == redact.REDACTED
  walked = 0
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert SECRET.encode() not in f.read(), os.path.join(root, name)
      walked += 1
  assert walked >= 5  # config.json, metrics.jsonl, wandb_id.txt, the run's files.


def test_disabled_does_not_import_wandb(tmp_path):
  code = f"""
import sys
from configs import smoke
from diffusion.modes import train
from diffusion.run import resume
from diffusion.run import sinks
config = smoke.get_config()
assert config.wandb.mode == "disabled"
resume.check_config(config, {str(tmp_path)!r}, write=True)
w = sinks.MetricWriter({str(tmp_path)!r}, config)
w.write(2, {{"loss": 1.0}})
w.write_image(2, "samples", "missing.png")
w.close()
print("wandb imported:", "wandb" in sys.modules)
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "wandb imported: False" in out.stdout
  assert not os.path.exists(tmp_path / "wandb") and not os.path.exists(tmp_path / "wandb_id.txt")


def test_unknown_mode_raises(tmp_path):
  config = _config(mode="cloud")
  for fn in (lambda: sinks.check_wandb_config(config),
             lambda: resume.check_config(config, str(tmp_path), write=True),
             lambda: sinks.MetricWriter(str(tmp_path), config)):
    with pytest.raises(ValueError, match=r"wandb\.mode.*'cloud'.*disabled, offline, online"):
      fn()
  assert not os.path.exists(tmp_path / "config.json")


def test_check_config_modes(tmp_path):
  workdir, config = str(tmp_path / "run_m"), _config(mode="disabled")
  for mode in ("sample", "eval"):  # Reading a run needs its config.json.
    with pytest.raises(checks.ConfigError, match="has no config.json"):
      resume.check_config(config, workdir, write=False, mode=mode)
  with pytest.raises(ValueError, match=r"mode='serve' is unknown; valid: train, sample, eval"):
    resume.check_config(config, workdir, write=False, mode="serve")
  resume.check_config(config, workdir, write=True)
  config.eval.num_samples += 1  # Not what was trained: any mode accepts it.
  config.sample.method = "ddim"
  for mode in ("train", "sample", "eval"):
    resume.check_config(config, workdir, write=False, mode=mode)
  config.diffusion.num_steps += 1
  for mode, verb in (("train", "resume"), ("sample", "sample"), ("eval", "evaluate")):
    with pytest.raises(ValueError, match=rf"diffusion\.num_steps(.|\n)*{verb} anyway"):
      resume.check_config(config, workdir, write=False, mode=mode)
