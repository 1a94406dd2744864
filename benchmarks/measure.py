"""What every benchmark record shares: the device, its peak FLOP/s, and XLA's FLOP and memory
counts of a compiled executable.

Utilisation = FLOPs / step time / device peak: the nominal dense bf16 peak on GPU/TPU
(`PEAK_FLOPS`), on CPU a float32 `jnp.dot` peak measured here.
"""

import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

# Dense peak FLOP/s per chip at the precision the GPU/TPU presets compute in (bf16).
# Keys are matched as substrings of `device.device_kind`, first match wins (so 'TPU v5 lite'
# before 'TPU v5').
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12),
    ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def nominal_peak_flops(device_kind: str) -> tuple[float, str] | None:
  """(peak FLOP/s, which PEAK_FLOPS entry) of a device kind, or None if none matches."""
  for key, peak in PEAK_FLOPS:
    if key in device_kind:
      return peak, key
  return None


def device_peak_flops(device: jax.Device | None = None, seconds: float = 1.0) -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained) for `device` (default: the first)."""
  device = device or jax.devices()[0]
  nominal = nominal_peak_flops(device.device_kind)
  if nominal:
    return nominal[0], f"nominal dense bf16 of {nominal[1]}"
  if device.platform == "cpu":
    return measure_matmul_flops(seconds), "measured float32 jnp.dot"
  raise ValueError(f"no peak FLOP/s known for {device.device_kind!r}; add it to PEAK_FLOPS")


def measure_matmul_flops(seconds: float = 1.0, n: int = 1024, chain: int = 8) -> float:
  """Best FLOP/s of a jitted chain of `chain` float32 [n, n] matmuls over ~`seconds`."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32) / math.sqrt(n)

  @jax.jit
  def chained(x):
    return jax.lax.fori_loop(0, chain, lambda _, y: y @ a, x)

  jax.block_until_ready(chained(a))
  best, start = 0.0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    t = time.perf_counter()
    jax.block_until_ready(chained(a))
    best = max(best, 2 * n ** 3 * chain / (time.perf_counter() - t))
  return best


def flops_of(compiled) -> float:
  """XLA's FLOP count of a compiled executable (a loop body counts once)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def memory_of(compiled) -> dict[str, int]:
  """Per-device bytes from `memory_analysis()`; peak = arguments + outputs + temporaries -
  aliased (donated) bytes."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return {"peak_memory_bytes": int(peak), "argument_bytes": int(m.argument_size_in_bytes),
          "temp_bytes": int(m.temp_size_in_bytes)}


def median(times: list[float]) -> float:
  return float(statistics.median(times))


def count_params(params: PyTree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def device_fields() -> dict[str, Any]:
  """The record's description of where it ran."""
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform,
          "num_devices": jax.device_count(), "jax_version": jax.__version__}


def utilisation_fields(flops: float, seconds: float, peak: tuple[float, str]) -> dict[str, Any]:
  """FLOPs per second achieved in `seconds`, against the device peak (`device_peak_flops`)."""
  return {"achieved_flops_per_s": flops / seconds, "peak_flops_per_s": peak[0],
          "peak_flops_source": peak[1], "utilisation": flops / seconds / peak[0]}
