"""Timing a train step (`benchmarks.workloads.Workload`), optionally beside its PyTorch peer.

`bench_step` times the compiled JAX step; with `peer='torch'` it builds the peer (torch.compile'd,
eager, or both: `peer_compile='auto'` keeps the faster) and times it in blocks of `block` steps
alternating with JAX's, adding `peer_step_s` and `jax_over_torch_speed` (= peer step time / JAX
step time; >= 1 means JAX is faster). torch is imported only then.
"""

import time
from collections.abc import Callable
from typing import Any

import jax

from benchmarks import measure
from benchmarks.workloads import Workload


def _time_jax(w: Workload, n: int) -> list[float]:
  times = []
  for _ in range(n):
    start = time.perf_counter()
    w.state, metrics = w.compiled(w.state, w.batch)
    jax.block_until_ready((w.state, metrics))
    times.append(time.perf_counter() - start)
  return times


def _time_torch(step: Callable, batch: dict, n: int) -> list[float]:
  import torch  # pylint: disable=g-import-not-at-top
  sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
  times = []
  for _ in range(n):
    start = time.perf_counter()
    metrics = step(batch)
    float(metrics["loss"])
    sync()
    times.append(time.perf_counter() - start)
  return times


def _peer_candidate(w: Workload, compile_: bool, warmup: int) -> dict:
  """A peer step built and warmed up; records compile failures instead of raising."""
  start = time.perf_counter()
  try:
    step, batch = w.make_peer(compile_)
    _time_torch(step, batch, 1)  # torch.compile compiles on the first call
    first_s = time.perf_counter() - start
    _time_torch(step, batch, warmup)
    return {"step": step, "batch": batch, "compiled": compile_, "first_call_s": first_s}
  except Exception as e:  # pylint: disable=broad-except  (any inductor failure: fall back)
    if not compile_:
      raise
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def _peer_params(step) -> list:
  modules = [step.gen, step.disc] if hasattr(step, "gen") else [step.model]
  return [p for m in modules for p in m.parameters()]


def _peer_fields(candidates: list[dict], peer_times: dict[int, list[float]],
                 step_s: float) -> dict[str, Any]:
  """The record's peer fields: each candidate's times (or error) and the faster one's."""
  import torch  # pylint: disable=g-import-not-at-top
  record = {"peer": "torch", "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads()}
  for c in candidates:
    key = "peer_compiled" if c.get("compiled", "error" in c) else "peer_eager"
    if "error" in c:
      record[f"{key}_error"] = c["error"]
      continue
    record[f"{key}_step_s"] = measure.median(peer_times[id(c)])
    record[f"{key}_first_call_s"] = c["first_call_s"]
  best = min((c for c in candidates if "error" not in c),
             key=lambda c: measure.median(peer_times[id(c)]))
  record.update(
      peer_mode="torch.compile" if best["compiled"] else "eager",
      peer_step_s=measure.median(peer_times[id(best)]),
      peer_num_params=sum(p.numel() for p in _peer_params(best["step"])))
  record["jax_over_torch_speed"] = record["peer_step_s"] / step_s
  return record


def bench_step(w: Workload, *, steps: int, warmup: int, peer: str = "",
               peer_compile: str = "auto", block: int = 10, profile_dir: str = "",
               peak: tuple[float, str] | None = None, config_name: str = "") -> dict[str, Any]:
  """Times `w` (and its peer, alternating blocks of `block` steps) -> the JSON record."""
  _time_jax(w, max(warmup, 1))
  candidates = []
  if peer == "torch":
    if peer_compile in ("auto", "on"):
      candidates.append(_peer_candidate(w, True, warmup))
    if peer_compile in ("auto", "off") or "error" in candidates[-1]:
      candidates.append(_peer_candidate(w, False, warmup))
  live = [c for c in candidates if "error" not in c]
  jax_times, peer_times = [], {id(c): [] for c in live}
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
  done = 0
  while done < steps:
    n = min(block if live else steps, steps - done)
    jax_times += _time_jax(w, n)
    for c in live:
      peer_times[id(c)] += _time_torch(c["step"], c["batch"], n)
    done += n
  if profile_dir:
    jax.profiler.stop_trace()

  flops = measure.flops_of(w.compiled)
  step_s = measure.median(jax_times)
  record = {
      "what": w.name, "config": config_name, **measure.device_fields(), "dtype": w.config.dtype,
      "batch_size": w.config.data.batch_size, "steps": steps, "warmup": warmup,
      "step_s": step_s, "step_s_min": min(jax_times), "step_s_max": max(jax_times),
      "throughput": w.units_per_step / step_s, "throughput_unit": f"{w.unit}/s",
      "units_per_step": w.units_per_step, "flops_per_step": flops,
      **measure.utilisation_fields(flops, step_s, peak or measure.device_peak_flops()),
      **measure.memory_of(w.compiled), "compile_s": w.compile_s, "num_params": w.num_params,
  }
  if peer == "torch":
    record.update(_peer_fields(candidates, peer_times, step_s))
  return record
