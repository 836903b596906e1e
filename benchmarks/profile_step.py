"""Where the CPU train step goes: a trace of the compiled step, split by op class.

    python benchmarks/profile_step.py [--twin mnist|cifar10] [--steps 3] [--out DIR]

Builds the train step of `benchmarks/twin.py`'s config (the same program ``--mode
train`` runs), traces ``--steps`` steps with XLA:CPU's per-thunk trace events
(``--xla_cpu_enable_xprof_traceme=true``, added to ``XLA_FLAGS`` here, before JAX
starts) and sums the events of the XLA worker threads by what each HLO instruction
belongs to, read from the compiled HLO's ``op_name`` metadata (the flax module path:
``norm``, ``attn``, ``temb`` / ``emb_proj``, ``skip``, ...; instructions without
metadata take their first user's):

- GroupNorm (+ the SiLU, adds and scale / bias gradients XLA fuses into it);
- layout copies / transposes (``copy`` / ``transpose`` fusions: operands laid out
  for the dots and the convolutions' weight gradients);
- bias adds, pads and SiLU around the convs; attention (QK / AV and softmax, and the
  q, k, v, out projections); the embedding MLPs; the 1x1 skip projections;
- optimizer + EMA + loss (everything outside the UNet: Adam, clipping, the EMA,
  the non-finite guard, the noise draws);
- convolutions: XLA:CPU runs them as Eigen tasks that emit no trace events (their
  thunks show only the dispatch), so they are the remainder: the threads' time
  (``2 x`` wall on 2 cores) minus everything traced. That remainder also holds any
  time both threads wait, so it is an upper bound on the convolutions.

Prints the table of thread-milliseconds per step; ``--out`` keeps the trace
(``plugins/profile/*/*.xplane.pb``, readable by TensorBoard / XProf) and the HLO.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_enable_xprof_traceme=true").strip()
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.join(_ROOT, "benchmarks")):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import diffusion  # noqa: E402,F401  (the package's CPU flag, as a user gets it)
import jax  # noqa: E402
import numpy as np  # noqa: E402

import twin  # noqa: E402
from diffusion import experiment  # noqa: E402
from diffusion.dist import compile as compile_lib  # noqa: E402
from diffusion.dist import placement  # noqa: E402
from diffusion.train import step as train_step  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(")


class Hlo:
  """The compiled module's instructions: opcode, op_name, called computation, users."""

  def __init__(self, text: str):
    self.comps, cur = {}, None
    for line in text.splitlines():
      m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
      if m and not line.startswith(" "):
        cur = m.group(1)
        self.comps[cur] = []
      elif cur is not None:
        self.comps[cur].append(line)
    self.inst, self.users = {}, collections.defaultdict(list)
    for lines in self.comps.values():
      for line in lines:
        m = _INSTR.match(line)
        if not m:
          continue
        name, opcode = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        self.inst[name] = (opcode, op_name.group(1) if op_name else "",
                           calls.group(1) if calls else None)
        for used in re.findall(r"%([\w.\-]+)[,)]", line.split("=", 1)[1]):
          self.users[used].append(name)

  def body(self, comp, depth=0):
    """(opcodes, op_names) inside a called computation, 3 levels deep."""
    ops, names = set(), []
    for line in self.comps.get(comp, []):
      m = _INSTR.match(line)
      if not m:
        continue
      ops.add(m.group(2))
      names += re.findall(r'op_name="([^"]*)"', line)
      called = re.search(r"calls=%?([\w.\-]+)", line)
      if called and depth < 3:
        sub_ops, sub_names = self.body(called.group(1), depth + 1)
        ops |= sub_ops
        names += sub_names
    return ops, names

  def classify(self, name: str, depth: int = 0) -> str:
    if name not in self.inst:
      return "runtime (while, tuples, all-reduce)"
    opcode, op_name, calls = self.inst[name]
    ops, names = self.body(calls) if calls else (set(), [])
    ops.add(opcode)
    names = " ".join([op_name] + names)
    if not names.strip() and depth < 3 and self.users.get(name):
      return self.classify(self.users[name][0], depth + 1)
    if "convolution" in ops:
      return "convolutions: dispatch and fused work"
    if "dot" in ops:
      if "attn" in names:
        return ("attention: q, k, v, out projections" if "qkv" in names or "proj_out" in names
                else "attention: QK, AV, softmax")
      if "temb" in names or "emb_proj" in names:
        return "embedding MLPs"
      if "skip" in names:
        return "1x1 skip projections"
      return "other dots"
    if opcode in ("copy", "transpose") or name.startswith(("transpose", "copy")):
      return "layout copies / transposes"
    if "norm" in names:
      return "GroupNorm (+ fused SiLU, adds)"
    if "attn" in names:
      return "attention: QK, AV, softmax"
    if "temb" in names or "emb_proj" in names:
      return "embedding MLPs"
    if "UNet" not in names:
      return "optimizer + EMA + loss"
    if "conv" in names or "sample" in names:
      return "bias, pads, SiLU around the convs"
    return "other UNet elementwise"


def split(trace_dir: str, hlo: Hlo, steps: int, wall_s: float) -> list[tuple[str, float]]:
  """``[(class, thread-ms per step)]``, largest first, the convolutions' remainder included."""
  from jax._src.lib import _profile_data  # pylint: disable=g-import-not-at-top
  path = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))[0]
  plane = next(p for p in _profile_data.ProfileData.from_file(path).planes
               if p.name == "/host:CPU")
  totals, threads = collections.Counter(), 0
  for line in plane.lines:
    if not line.name.startswith("tf_XLAEigen"):
      continue
    threads += 1
    for e in line.events:
      if e.name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ", "SlinkyThreadPool")):
        continue
      totals[hlo.classify(e.name)] += e.duration_ns / 1e6 / steps
  traced = sum(totals.values())
  rows = sorted(totals.items(), key=lambda kv: -kv[1])
  thread_ms = threads * 1e3 * wall_s
  rows.append(("convolutions (untraced remainder, with any idle time)", thread_ms - traced))
  return rows, thread_ms


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--twin", choices=tuple(twin.TWINS), default="mnist")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", default="", help="keep the trace and the HLO here")
  args = p.parse_args(argv)
  if jax.default_backend() != "cpu":
    raise SystemExit("profile_step.py splits XLA:CPU traces; on a GPU use XProf instead")
  out = args.out or tempfile.mkdtemp(prefix="profile_step-")
  os.makedirs(out, exist_ok=True)
  config = twin.load_config(args.twin, twin.TWINS[args.twin][1], "float32")
  exp = experiment.build(config)
  mesh = placement.make_mesh(jax.local_devices())
  step = compile_lib.compile_step(train_step.make_train_step(exp.loss_fn, exp.tx, config),
                                  "jit", mesh)
  c = config.data
  images = np.random.default_rng(0).uniform(-1, 1, (c.batch_size, c.image_size, c.image_size,
                                                    c.channels)).astype(np.float32)
  batch, state = step.shard_batch({"image": images}), step.replicate(exp.init_state())
  executable = step.fn.lower(state, batch).compile()
  text = executable.as_text()
  with open(os.path.join(out, f"{args.twin}.hlo.txt"), "w") as f:
    f.write(text)
  step = dataclasses.replace(step, fn=executable)
  for _ in range(2):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  jax.profiler.start_trace(out)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, _ = step(state, batch)
    jax.block_until_ready(state)
  wall = (time.perf_counter() - t0) / args.steps
  jax.profiler.stop_trace()
  rows, thread_ms = split(out, Hlo(text), args.steps, wall)
  print(f"{args.twin}: batch {c.batch_size}, {1e3 * wall:.0f} ms per step (traced), "
        f"{thread_ms:.0f} thread-ms per step on the XLA threads; XLA_FLAGS="
        f"{os.environ['XLA_FLAGS']!r}; trace in {out}")
  print("| part | thread-ms / step | share |\n|---|---:|---:|")
  for name, ms in rows:
    print(f"| {name} | {ms:.0f} | {100 * ms / thread_ms:.0f}% |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
