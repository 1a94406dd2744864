"""XLA:CPU compiler options for the jitted steps of each model (docs/performance.md).

XLA:CPU hands convolutions, dots and reductions to the YNNPACK library by default (jax 0.10).
Which of them it should keep differs by workload; measured with `python -m nwt_jax.bench` on
the 2-core CI machine (float32, `tiny` presets):

- Convolutions: YNNPACK's weight gradients ran 3-4x slower than XLA's own (Eigen) kernels (a
  48 -> 48 channel 3x3 conv at 32x28, batch 16: 24 vs 6.7 ms); the dVAE step took 0.57 s with
  them and 0.37 s without. Both models leave convolutions to Eigen.
- Reductions: YNNPACK sums over a middle axis (GroupNorm's per-channel statistics) ~7x faster
  than XLA's loops, and over a short last axis (the spatial stack's 56-key softmax) slower. The
  dVAE (GroupNorm everywhere) keeps them; the prior (LayerNorm and attention) does not.
- Dots: YNNPACK's and Eigen's matmuls are on a par; the prior keeps YNNPACK's.

GPU and TPU compilations get no options. An XLA that does not know an option (a later jaxlib
may rename these experimental fields) gets none either, with a warning, rather than failing.
"""

import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_LIBRARY = "LIBRARY_FUSION_TYPE_"
DVAE = {_YNN: _LIBRARY + "REDUCE"}  # the dVAE's steps: convolutions and GroupNorm
PRIOR = {_YNN: _LIBRARY + "INDIVIDUAL_DOT"}  # the prior's steps: matmuls, LayerNorm, softmax


def for_cpu(options: dict[str, Any]) -> dict[str, Any] | None:
  """`options` for `jax.jit(..., compiler_options=...)` when the default backend is the CPU and
  its XLA accepts them, else None."""
  if jax.default_backend() != "cpu":
    return None
  return options if _accepted(tuple(sorted(options.items()))) else None


def dvae() -> dict[str, Any] | None:
  """The options of the convolutional steps (the dVAE's, the probe's): `for_cpu(DVAE)`."""
  return for_cpu(DVAE)


def prior() -> dict[str, Any] | None:
  """The options of the transformer steps (the prior's training and sampling): `for_cpu(PRIOR)`."""
  return for_cpu(PRIOR)


@functools.cache
def _accepted(items: tuple[tuple[str, Any], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(jnp.zeros(())).compile()
  except Exception as e:  # pylint: disable=broad-except  (XLA: INVALID_ARGUMENT on unknown names)
    logging.warning("XLA:CPU rejected the compiler options %s (%s); compiling without them",
                    dict(items), str(e).splitlines()[0])
    return False
  return True
