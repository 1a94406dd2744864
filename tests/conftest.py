"""Test set-up: 8 virtual CPU devices stand in for a pod slice."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# The helpers of tests/support/ (toy trainers, fixtures) import as top-level modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent / "support"))


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib's XLA knows `flag` (an unknown flag in XLA_FLAGS aborts the process)."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                        capture_output=True, check=False).returncode == 0


# Must happen before jax is imported anywhere. The xdist workers and the tests' subprocesses
# inherit these flags (tests/integration/test_multiprocess.py keeps all but the device count).
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# Most tests run a step a handful of times, so XLA's compile time dominates the suite: compile at
# the lowest effort (convolutions and matmuls still call the same optimised kernels), and with
# XLA:CPU's older loop emitter instead of its MLIR fusion emitters, which halves the compile time
# of the tests' prior step at that level (5.1-6.3 s -> 2.7-2.9 s; an experimental switch, so
# only where this XLA has it).
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  if _xla_accepts("--xla_cpu_use_fusion_emitters=false"):
    _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session: the xdist workers and every subprocess
# (CLI runs, restarted trainers) inherit it from the controller's environment, so a program
# compiled once (the same step jitted again by another test or process) is loaded, not rebuilt.
# A fresh directory per session (the controller's), so timings and behaviour never depend on an
# earlier run; set JAX_COMPILATION_CACHE_DIR to choose one yourself.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="nwt_jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# A folder the session's test files share (inherited like the cache): the one default probe
# that test_demo.py's run and test_evaluate.py both need (tests/support/shared_probe.py).
_OWN_SHARED = None
if "NWT_TEST_SHARED_DIR" not in os.environ:
  _OWN_SHARED = tempfile.mkdtemp(prefix="nwt_jax_test_shared_")
  os.environ["NWT_TEST_SHARED_DIR"] = _OWN_SHARED


def pytest_configure(config):
  # pytest-xdist >= 3.6 hands out files by their number of tests unless told not to, which
  # defeats HEAVY_FILES (below): the demo's file would start after most others.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_unconfigure(config):
  if not hasattr(config, "workerinput"):  # the process that made them
    for made in (_OWN_CACHE, _OWN_SHARED):
      if made:
        shutil.rmtree(made, ignore_errors=True)


# With `--dist loadfile` a file runs on one worker and files are handed out in collection order:
# the files that take minutes go first, so none of them starts last while the other worker idles
# (heaviest first, by their seconds alone on 2 cores; the rest keep their order). test_evaluate.py
# comes after test_demo.py has started: it loads the probe the demo trains (shared_probe.py).
HEAVY_FILES = ("test_demo.py", "test_multiprocess.py", "test_prior.py", "test_footage.py",
               "test_bench.py", "test_bad_inputs.py", "test_train_dvae.py", "test_sampling.py",
               "test_builder.py", "test_train_prior.py", "test_generate.py", "test_dvae.py",
               "test_input_pipeline.py", "test_evaluate.py", "test_host_malloc.py")


def pytest_addoption(parser):
  parser.addoption("--mar_demo", action="store_true",
                   help="also run the demo end to end with a MAR prior (2-3 minutes)")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FILES)))


# XLA:CPU's per-step buffers reused rather than mapped anew (nwt_jax/runtime/host_malloc.py): before any
# test runs a computation.
from nwt_jax.runtime import host_malloc  # pylint: disable=g-import-not-at-top,wrong-import-position

host_malloc.tune_for_cpu()
