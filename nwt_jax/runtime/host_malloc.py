"""glibc malloc settings that keep XLA:CPU's per-step buffers mapped (docs/performance.md).

An XLA:CPU executable allocates its temporary buffer (~160 MB for the `tiny` training steps) on
every call and frees it at the end. glibc serves a block that large with a fresh mmap (from a
thread's arena, whatever the mmap settings, since those arenas' heaps stop at 64 MB) and unmaps
it on free, so every step faults all of its pages in again: ~40k minor page faults per `tiny`
dVAE or prior step on the 2-core CI machine. With one arena (the main heap, which grows with
sbrk), no mmap for large blocks and no trimming, the buffer is reused: ~3k faults per step and
steps 13-17% faster (`tiny`, measured in one process by toggling the settings).

The costs: the process keeps its peak heap until it exits, and all threads share one arena.
So `tune_for_cpu()` does nothing unless JAX can only run on the CPU. It must run before JAX's
first computation: threads that have already allocated keep their own arenas.
"""

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import pkgutil
import sys

from absl import logging
import jax

# mallopt parameters (glibc malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def _cpu_only() -> bool:
  """Whether JAX will run on the CPU: named by jax_platforms, or no accelerator plugin installed
  (checked without starting a backend)."""
  if jax.config.jax_platforms:
    return jax.config.jax_platforms.split(",")[0] == "cpu"
  namespace = importlib.util.find_spec("jax_plugins")
  plugins = list(pkgutil.iter_modules(namespace.submodule_search_locations)) if namespace else []
  return not (plugins or importlib.metadata.entry_points(group="jax_plugins")
              or importlib.util.find_spec("libtpu"))


@functools.cache
def tune_for_cpu() -> bool:
  """Applies the settings (once per process) where JAX runs on the CPU and the C library is
  glibc; returns whether they are in effect."""
  if not sys.platform.startswith("linux") or not _cpu_only():
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  if not all(mallopt(param, value) == 1 for param, value in _SETTINGS):
    logging.warning("glibc rejected a mallopt setting; XLA:CPU steps map their buffers anew")
    return False
  return True
