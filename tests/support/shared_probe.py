"""One evaluation probe per test session: the default probe (`probe.train_probe(seed=0)`, 64x56),
which both test_evaluate.py and the demo's background probe stage train (about a minute of CPU
each). The demo run of test_demo.py publishes the probe it trained (and checked); test_evaluate.py
loads it instead of training its own, or trains and publishes one if no demo claimed the job.

The xdist workers share a folder the controller made (conftest: $NWT_TEST_SHARED_DIR) and order
themselves with an flock on a file in it. Without that folder (or fcntl) nothing is shared.
"""

import contextlib
import os
import pathlib
import shutil
import threading

try:
  import fcntl
except ImportError:  # not POSIX: every file trains its own probe
  fcntl = None

ENV = "NWT_TEST_SHARED_DIR"


def _shared() -> pathlib.Path | None:
  folder = os.environ.get(ENV)
  return pathlib.Path(folder) if folder and fcntl and os.path.isdir(folder) else None


def _lock(folder: pathlib.Path, *, blocking: bool) -> int | None:
  """An open fd holding the exclusive lock (closing it lets go), or None if not blocking and
  another process holds it."""
  fd = os.open(folder / "probe.lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def default_probe():
  """The default probe: the session's published one (waiting while a demo run trains it), else
  one trained here (and published)."""
  from nwt_jax.evaluation import probe as probe_lib  # pylint: disable=g-import-not-at-top
  folder = _shared()
  if folder is None:
    return probe_lib.train_probe(seed=0)
  fd = _lock(folder, blocking=True)
  try:
    path = folder / "probe.npz"
    if path.exists():
      return probe_lib.load_probe(str(path))
    trained = probe_lib.train_probe(seed=0)
    probe_lib.save_probe(trained, str(path))  # atomic
    return trained
  finally:
    os.close(fd)


@contextlib.contextmanager
def publish_when_saved(path: pathlib.Path):
  """Around a demo run that trains the default probe into `path` (saved once it passed its bar):
  holds the lock, so that `default_probe` waits for this probe rather than training another,
  and publishes `path` as soon as it appears. Does nothing if a probe is published or being
  trained elsewhere (the demo then trains its own, as it would anyway)."""
  folder = _shared()
  fd = _lock(folder, blocking=False) if folder else None
  if fd is not None and (folder / "probe.npz").exists():
    os.close(fd)
    fd = None
  if fd is None:
    yield
    return
  done = threading.Event()

  def watch():
    try:
      while True:
        finished = done.is_set()  # read before the check: a last look after the run ended
        if path.exists():
          tmp = folder / "probe.npz.tmp"
          shutil.copyfile(path, tmp)
          os.replace(tmp, folder / "probe.npz")
          return
        if finished:
          return
        done.wait(0.5)
    finally:
      os.close(fd)  # lets a waiting `default_probe` go on

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  try:
    yield
  finally:
    done.set()
    watcher.join()
