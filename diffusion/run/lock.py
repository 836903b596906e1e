"""One writer per workdir: an advisory lock file that names its holder.

    with lock.WorkdirLock(workdir, "train"):   # WorkdirBusy if another process holds it
      ...

``--mode train`` holds ``<workdir>/.lock`` (process 0 of a multi-process
run), ``--mode eval`` holds ``<workdir>/eval/.lock``, so a second trainer (or
a second evaluator) is refused at once, with the holder's host, pid and start
time in the message, while an evaluator may still read a workdir that trains.

Local workdirs use ``fcntl.flock``: the kernel drops the lock when its
process dies, however it dies, so the file a killed holder leaves behind is
taken over (with a line saying whose it was). A released lock deletes its
file; the holder re-checks after locking that the path is still its file, so
a release racing an acquire never leaves two holders.

Remote workdirs (``gs://``) have no ``flock``: the lock there is the file
itself, holding host, pid and a time that the holder refreshes (`refresh`,
at every metrics row). A file whose time is older than `STALE_AFTER_S` is a
dead holder's and is taken over; two writers starting within the same
second can both win (object stores offer no atomic create through epath).

`hold` is the multi-process form (process 0 locks, every process learns the
outcome). Only the standard library and etils at import: cheap to import.
"""
from __future__ import annotations

import json
import os
import socket
import time

from etils import epath

from diffusion.core.checks import RunError
from diffusion.run.workdir import is_local

STALE_AFTER_S = 600.0  # Remote locks: a holder that has not refreshed for this long is dead.
LOCK_NAMES = {"train": ".lock", "eval": "eval/.lock"}


class WorkdirBusy(RunError):
  """Another live process holds the workdir's lock (message: who, since when)."""


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _describe(info: dict | None) -> str:
  if not info:
    return "another process (it has not written its name yet)"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
  return f"pid {info.get('pid')} on {info.get('host')} (since {since})"


def _parse(text: str) -> dict | None:
  try:
    info = json.loads(text)
  except ValueError:
    return None
  return info if isinstance(info, dict) else None


class WorkdirLock:
  """The ``what`` lock ("train" or "eval") of `workdir`; a context manager.

  `acquire` raises `WorkdirBusy` when a live process holds it. `release`
  deletes the file (idempotent); ``release(remove_empty_workdir=True)`` also
  removes the folders acquiring made, if still empty (a run that failed before
  writing anything leaves no workdir).
  """

  def __init__(self, workdir, what: str = "train"):
    if what not in LOCK_NAMES:
      raise ValueError(f"lock {what!r} is unknown; valid: {', '.join(LOCK_NAMES)}")
    self.workdir = epath.Path(workdir)
    self.what = what
    self.path = self.workdir / LOCK_NAMES[what]
    self.local = is_local(workdir)
    self.took_over: dict | None = None  # The dead holder's info, if its file was left.
    self._fd: int | None = None
    self._held = False
    self._made: list[epath.Path] = []  # Folders that acquire made.

  # ------------------------------------------------------------------ local
  def _acquire_local(self) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
    path = os.fspath(self.path)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        info = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        os.close(fd)
        raise WorkdirBusy(
            f"{self.workdir} is in use: its {self.what} lock {path} is held by "
            f"{_describe(info)}; wait for that run to end, or use another --workdir") from None
      try:  # The holder we raced may have deleted the file after we opened it.
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    left = os.pread(fd, 4096, 0).decode(errors="replace")
    self.took_over = _parse(left) if left.strip() else None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    self._fd = fd

  # ----------------------------------------------------------------- remote
  def _acquire_remote(self) -> None:
    if self.path.exists():
      info = _parse(self.path.read_text())
      if info and time.time() - float(info.get("since", 0)) < STALE_AFTER_S:
        raise WorkdirBusy(
            f"{self.workdir} is in use: its {self.what} lock {self.path} is held by "
            f"{_describe(info)}, refreshed {time.time() - info['since']:.0f}s ago; wait for "
            f"that run to end (a lock not refreshed for {STALE_AFTER_S:.0f}s is taken over), "
            "or use another --workdir")
      self.took_over = info
    self.path.write_text(json.dumps(_holder()))

  def acquire(self) -> "WorkdirLock":
    if self._held:
      return self
    self._made = [d for d in (self.workdir, self.path.parent) if not d.exists()]
    self.path.parent.mkdir(parents=True, exist_ok=True)
    try:
      self._acquire_local() if self.local else self._acquire_remote()
    except BaseException:
      self._remove_workdir_if_made()
      raise
    self._held = True
    return self

  def refresh(self) -> None:
    """Remote locks: renews the holder's time (a no-op for local ones)."""
    if self._held and not self.local:
      self.path.write_text(json.dumps(_holder()))

  def _remove_workdir_if_made(self) -> None:
    for folder in reversed(self._made):  # Innermost first.
      try:
        if folder.exists() and not any(folder.iterdir()):
          folder.rmdir()
      except OSError:
        pass
    self._made = []

  def release(self, remove_empty_workdir: bool = False) -> None:
    """Deletes the lock file and unlocks; with `remove_empty_workdir`, the folders
    that `acquire` made (the workdir, eval/) go too if they hold nothing else."""
    if not self._held:
      return
    self._held = False
    try:
      self.path.unlink(missing_ok=True)
    finally:
      if self._fd is not None:
        os.close(self._fd)  # Unlocks.
        self._fd = None
    if remove_empty_workdir:
      self._remove_workdir_if_made()

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def hold(workdir, what: str = "train", echo=print) -> WorkdirLock | None:
  """Process 0 takes the `what` lock of `workdir`; every process learns whether it
  could (a collective with several processes: all raise `WorkdirBusy` together).
  Returns the lock on process 0, None elsewhere; says so when it took over a
  dead holder's lock."""
  from diffusion.dist import cluster  # pylint: disable=g-import-not-at-top  (imports jax)
  import jax  # pylint: disable=g-import-not-at-top
  held, error = None, None
  if jax.process_index() == 0:
    try:
      held = WorkdirLock(workdir, what).acquire()
    except WorkdirBusy as e:
      error = e
  if cluster.any_process(error is not None):
    raise error or WorkdirBusy(f"process 0 could not take the {what} lock of {workdir}: "
                               "another run holds it")
  if held is not None and held.took_over:
    echo(f"took over the {what} lock of {_describe(held.took_over)}, which ended "
         "without releasing it")
  return held
