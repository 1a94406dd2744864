"""Benchmarks (DESIGN §8): one JSON line per run, optionally with a PyTorch peer side by side.

    python -m nwt_jax.bench --what=dvae_step --config=configs/dvae.py:tiny
    python -m nwt_jax.bench --what=prior_step --config=configs/prior.py:tiny,far \\
        --dvae_config=configs/dvae.py:tiny --peer=torch
    python -m nwt_jax.bench --what=generate --config=configs/prior.py:tiny,far \\
        --dvae_config=configs/dvae.py:tiny --audio_seconds=30

`dvae_step` times `train_dvae.setup(config).train_step` with the adversarial branch on
(`loss.adv_start_step` is set to 0 so both networks update, the step the run spends most of its
time in); `prior_step` times `train_prior.setup(config, manifest).train_step`, with the code
grid, heads and codebook of the manifest taken from `--dvae_config` (what `nwt_jax.tokenize`
would write). Batches are synthetic in-memory arrays of the real shapes and dtypes.

`generate` decodes `--audio_seconds` of (synthetic) log-mel with `sampling.make_sampler` in
windows of the prior's `max_frames` whose first `--overlap_frames` frames repeat the previous
window's end, then renders the new codes with the dVAE decoder; random-init parameters. It
reports the real-time factor (wall seconds / audio seconds) and the compile seconds of the
executables a 30 s and a 600 s audio need (their ratio should be ~1: windows have one shape).

FLOPs come from XLA's `cost_analysis()` of the compiled step (for `generate`, of the compiled
per-frame / per-code steps times their trip counts, since XLA counts a loop body once).
Utilisation = FLOPs / step time / device peak: the nominal dense bf16 peak on GPU/TPU
(`PEAK_FLOPS`), on CPU a float32 `jnp.dot` peak measured here.

`--peer=torch` builds `benchmarks.torch_peer` (the same models in PyTorch, weights copied from the
JAX initial state), times it in blocks alternating with JAX's, and adds `peer_step_s` and
`jax_over_torch_speed` (= peer step time / JAX step time; >= 1 means JAX is faster).
torch is imported only then.
"""

import collections
import copy
import dataclasses
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from nwt_jax.runtime import compile_options
from nwt_jax.runtime import host_malloc
from nwt_jax.inference import sampling
from nwt_jax.training import sharding
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import prior as train_prior
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib

PyTree = Any

# Dense peak FLOP/s per chip at the precision the GPU/TPU presets compute in (bf16).
# Keys are matched as substrings of `device.device_kind`, first match wins.
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12),
    ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)
FRAME_RATE = 30  # video frames per second of audio (DESIGN §3)

FLAGS = flags.FLAGS
def _define_flags() -> None:
  """The command-line flags, defined only when the module runs as a program (tests and
  other modules import it, and absl allows one definition of each name per process)."""
  flags.DEFINE_enum("what", "dvae_step", ["dvae_step", "prior_step", "generate"], "What to time.")
  config_flags.DEFINE_config_file("config", None, "dVAE config (dvae_step) or prior config.",
                                  lock_config=False)
  config_flags.DEFINE_config_file(
      "dvae_config", "configs/dvae.py:tiny",
      "dVAE config giving the prior's code grid (prior_step, generate) and the decoder (generate).",
      lock_config=False)
  flags.DEFINE_integer("steps", 50, "Timed steps (the median is reported).")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
  flags.DEFINE_enum("peer", "", ["", "torch"], "Also time a PyTorch peer of the same step.")
  flags.DEFINE_enum("peer_compile", "auto", ["auto", "on", "off"],
                    "torch.compile the peer: on, off, or auto (try it, keep the faster of the two).")
  flags.DEFINE_integer("block", 10, "Steps per block when JAX and the peer alternate.")
  flags.DEFINE_float("audio_seconds", 30.0, "generate: seconds of audio to decode.")
  flags.DEFINE_integer("overlap_frames", 4, "generate: prompt frames repeated from the last window.")
  flags.DEFINE_boolean("compile_check", True, "generate: compile seconds for 30 s vs 600 s audio.")
  flags.DEFINE_float("temperature", 1.0, "generate: sampling temperature.")
  flags.DEFINE_float("audio_guidance", 1.0, "generate: classifier-free audio guidance weight "
                     "(1: off; > 1 decodes with and without the audio as one batch).")
  flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the timed steps here.")


# ---------------------------------------------------------------------------------------------
# Device facts


def device_peak_flops(device: jax.Device | None = None, seconds: float = 1.0) -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained) for `device` (default: the first)."""
  device = device or jax.devices()[0]
  for key, peak in PEAK_FLOPS:
    if key in device.device_kind:
      return peak, f"nominal dense bf16 of {key}"
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


def _median(times: list[float]) -> float:
  return float(statistics.median(times))


# ---------------------------------------------------------------------------------------------
# Train-step workloads


@dataclasses.dataclass
class Workload:
  """A compiled train step with its state and a synthetic batch, ready to time."""
  name: str  # 'dvae_step' | 'prior_step'
  config: ml_collections.ConfigDict
  compiled: Callable  # (state, batch) -> (state, metrics); donates state
  state: PyTree
  batch: dict[str, jax.Array]
  host_batch: dict[str, np.ndarray]
  units_per_step: int  # frames (dVAE) or codes (prior) per step
  unit: str
  compile_s: float
  num_params: int
  make_peer: Callable[[bool], tuple[Callable, dict]]  # compile? -> (peer step, peer batch)


def _count(params: PyTree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def dvae_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random frames and episode ids shaped like the dVAE input pipeline's batches."""
  d = config.data
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (d.batch_size, d.frames_per_example, d.height, d.width,
                                         3), dtype=np.uint8),
          "episode": rng.integers(0, config.dvae.num_episodes, (d.batch_size,), dtype=np.int32)}


def bench_dvae_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the dVAE benchmark times: the adversarial step (both networks update)."""
  config = copy.deepcopy(config)
  config.loss.adv_start_step = 0
  return config


def dvae_workload(config: ml_collections.ConfigDict, devices=None) -> Workload:
  """`train_dvae.setup(config)`'s train step on a synthetic batch, compiled ahead of time."""
  config = bench_dvae_config(config)
  s = train_dvae.setup(config, devices)
  host_batch = dvae_batch(config)
  batch = sharding.put_batch(host_batch, s.mesh)
  start = time.perf_counter()
  compiled = s.lower_train_step(batch).compile()
  compile_s = time.perf_counter() - start
  state = s.init_state()
  params = jax.device_get(state.params)  # the initial weights, for the peer (state is donated)
  d = config.data

  def make_peer(compile_: bool):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
    gen, disc = torch_peer.build_dvae(config)
    torch_peer.load_flax_params(gen, params["generator"])
    torch_peer.load_flax_params(disc, params["discriminator"])
    peer_batch = {"video": torch.from_numpy(host_batch["video"].copy()),
                  "episode": torch.from_numpy(host_batch["episode"].astype(np.int64))}
    return torch_peer.DVAETrainStep(config, gen, disc, compile=compile_), peer_batch

  return Workload("dvae_step", config, compiled, state, batch, host_batch,
                  d.batch_size * d.frames_per_example, "frames", compile_s,
                  _count(state.params), make_peer)


def manifest_from_dvae(dvae_config: ml_collections.ConfigDict, frames: int) -> dict:
  """The token manifest a dVAE of `dvae_config` would give the prior (grid, heads, codes)."""
  levels = len(dvae_config.dvae.channels) - 1
  grid = (dvae_config.data.height >> levels, dvae_config.data.width >> levels)
  return {"grid": list(grid), "code_heads": dvae_config.dvae.heads,
          "num_codes": dvae_config.dvae.num_codes,
          "num_episodes": dvae_config.dvae.num_episodes, "mel_bins": 80, "num_frames": frames}


def prior_batch(config: ml_collections.ConfigDict, manifest: dict,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Random codes, log-mel and episode ids shaped like the token pipeline's batches."""
  b, t = config.data.batch_size, train_prior.window_frames(config, manifest)
  gh, gw = manifest["grid"]
  rng = np.random.default_rng(seed)
  return {"codes": rng.integers(0, manifest["num_codes"], (b, t, gh, gw, manifest["code_heads"]),
                                dtype=np.int32),
          "mel": rng.normal(-6.0, 3.0, (b, 4 * t, manifest["mel_bins"])).astype(np.float32),
          "episode": rng.integers(0, manifest["num_episodes"], (b,), dtype=np.int32)}


def prior_workload(config: ml_collections.ConfigDict,
                   dvae_config: ml_collections.ConfigDict, devices=None) -> Workload:
  """`train_prior.setup(config, manifest)`'s train step on a synthetic batch, compiled ahead."""
  manifest = manifest_from_dvae(dvae_config, config.data.frames_per_example)
  s = train_prior.setup(config, manifest, devices)
  host_batch = prior_batch(config, manifest)
  batch = sharding.put_batch(host_batch, s.mesh)
  state = s.init_state()
  start = time.perf_counter()
  compiled = s.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  codes = host_batch["codes"]
  params = jax.device_get(state.params)  # the initial weights, for the peer (state is donated)

  def make_peer(compile_: bool):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
    model = torch_peer.build_prior(config, manifest)
    torch_peer.load_flax_params(model, params)
    peer_batch = {"codes": torch.from_numpy(codes.astype(np.int64)),
                  "mel": torch.from_numpy(host_batch["mel"].copy()),
                  "episode": torch.from_numpy(host_batch["episode"].astype(np.int64))}
    return torch_peer.PriorTrainStep(config, model, compile=compile_), peer_batch

  return Workload("prior_step", config, compiled, state, batch, host_batch, int(codes.size),
                  "tokens", compile_s, _count(state.params), make_peer)


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


def bench_step(w: Workload, *, steps: int, warmup: int, peer: str = "",
               peer_compile: str = "auto", block: int = 10, profile_dir: str = "",
               peak: tuple[float, str] | None = None) -> dict[str, Any]:
  """Times `w` (and its peer, alternating blocks of `block` steps) -> the JSON record."""
  _time_jax(w, max(warmup, 1))
  candidates = []
  if peer == "torch":
    import torch  # pylint: disable=g-import-not-at-top
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

  flops = flops_of(w.compiled)
  step_s = _median(jax_times)
  peak_flops, peak_source = peak or device_peak_flops()
  device = jax.devices()[0]
  record = {
      "what": w.name, "config": _config_name(), "device_kind": device.device_kind,
      "platform": device.platform, "num_devices": jax.device_count(),
      "jax_version": jax.__version__, "dtype": w.config.dtype,
      "batch_size": w.config.data.batch_size, "steps": steps, "warmup": warmup,
      "step_s": step_s, "step_s_min": min(jax_times), "step_s_max": max(jax_times),
      "throughput": w.units_per_step / step_s, "throughput_unit": f"{w.unit}/s",
      "units_per_step": w.units_per_step, "flops_per_step": flops,
      "achieved_flops_per_s": flops / step_s, "peak_flops_per_s": peak_flops,
      "peak_flops_source": peak_source, "utilisation": flops / step_s / peak_flops,
      **memory_of(w.compiled), "compile_s": w.compile_s, "num_params": w.num_params,
  }
  if peer == "torch":
    record.update(peer="torch", torch_version=torch.__version__,
                  torch_threads=torch.get_num_threads())
    for c in candidates:
      key = "peer_compiled" if c.get("compiled", "error" in c) else "peer_eager"
      if "error" in c:
        record[f"{key}_error"] = c["error"]
        continue
      record[f"{key}_step_s"] = _median(peer_times[id(c)])
      record[f"{key}_first_call_s"] = c["first_call_s"]
    best = min(live, key=lambda c: _median(peer_times[id(c)]))
    record.update(
        peer_mode="torch.compile" if best["compiled"] else "eager",
        peer_step_s=_median(peer_times[id(best)]),
        peer_num_params=sum(p.numel() for p in _peer_params(best["step"])))
    record["jax_over_torch_speed"] = record["peer_step_s"] / step_s
  return record


def _peer_params(step) -> list:
  modules = [step.gen, step.disc] if hasattr(step, "gen") else [step.model]
  return [p for m in modules for p in m.parameters()]


# ---------------------------------------------------------------------------------------------
# Generation


class Generation:
  """Windowed FAR/MAR decoding of a long audio plus dVAE rendering, random-init parameters."""

  def __init__(self, prior_config: ml_collections.ConfigDict,
               dvae_config: ml_collections.ConfigDict, *, overlap: int = 4,
               temperature: float = 1.0, audio_guidance: float = 1.0, seed: int = 0):
    self.window = prior_config.prior.max_frames
    if not 0 <= overlap < self.window:
      raise ValueError(f"overlap_frames={overlap} must be in [0, max_frames={self.window})")
    self.overlap = overlap
    self.manifest = manifest_from_dvae(dvae_config, self.window)
    self.prior = train_prior.make_model(prior_config, self.manifest)
    self.dvae, _ = train_dvae.make_models(dvae_config)
    self.options = sampling.SamplingOptions(temperature=temperature,
                                            audio_guidance=audio_guidance)
    self.rows = 2 if self.options.guided else 1  # guidance: with and without audio, one batch
    self.frame_shape = tuple(self.manifest["grid"]) + (self.manifest["code_heads"],)
    self.frame_hw = (dvae_config.data.height, dvae_config.data.width)
    w = self.window
    key_p, key_d = jax.random.split(jax.random.key(seed))
    codes = jnp.zeros((1, w) + self.frame_shape, jnp.int32)
    mel = jnp.zeros((1, 4 * w, 80), jnp.float32)
    self.prior_params = jax.jit(lambda k: nn.unbox(self.prior.init(
        {"params": k, "style": k}, codes, mel, jnp.zeros((1,), jnp.int32),
        train=False)["params"]))(key_p)
    self.dvae_params = jax.jit(lambda k: nn.unbox(self.dvae.init(
        {"params": k}, jnp.zeros((1,) + self.frame_hw + (3,), jnp.uint8),
        jnp.zeros((1,), jnp.int32), train=False)["params"]))(key_d)
    self.style_dim = prior_config.prior.style_dim

  def windows(self, num_frames: int) -> list[tuple[int, int]]:
    """(first frame, frames it adds) per window; every window spans `window` frames."""
    stride = self.window - self.overlap
    out, start = [(0, self.window)], stride
    while start + self.overlap < num_frames:
      out.append((start, stride))
      start += stride
    return out

  def _render(self, params, codes, episode):
    frames = self.dvae.apply({"params": params}, codes, episode, method=dvae_lib.DVAE.decode)
    return jnp.clip(jnp.round((frames + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

  def _compile_render(self, num_frames: int):
    """`_render` of `num_frames` frames, compiled (with the dVAE's XLA:CPU options)."""
    sds = jax.ShapeDtypeStruct
    render = jax.jit(self._render, compiler_options=compile_options.dvae())
    return render.lower(self.dvae_params, sds((1, num_frames) + self.frame_shape, jnp.int32),
                        sds((1, num_frames), jnp.int32)).compile()

  def compile(self, num_frames: int) -> tuple[dict, float]:
    """Every executable `run` needs for `num_frames` frames, compiled from a cold cache."""
    jax.clear_caches()
    start = time.perf_counter()
    sds = jax.ShapeDtypeStruct
    w = self.window
    sampler = sampling.make_sampler(self.prior, self.options)
    cache = jax.eval_shape(lambda: sampling.init_cache(self.prior, 1, self.options))
    compiled = {"sampler": sampler.lower(
        self.prior_params, sds((1, 4 * w, 80), jnp.float32), sds((1,), jnp.int32),
        sds((1, self.style_dim), jnp.float32), jax.random.key(0), cache,
        sds((1, w) + self.frame_shape, jnp.int32), sds((), jnp.int32)).compile()}
    for n in sorted({n for _, n in self.windows(num_frames)}):
      compiled[n] = self._compile_render(n)
    return compiled, time.perf_counter() - start

  def run(self, compiled: dict, mel: np.ndarray, seed: int = 0) -> np.ndarray:
    """log-mel [4N, 80] -> frames uint8 [N, H, W, 3] (on the host)."""
    num_frames = mel.shape[0] // 4
    w, o = self.window, self.overlap
    padded = np.zeros((4 * (num_frames + w), mel.shape[1]), np.float32)
    padded[:mel.shape[0]] = mel
    episode = jnp.zeros((1,), jnp.int32)
    z = jnp.zeros((1, self.style_dim), jnp.float32)
    rng = jax.random.key(seed)
    cache = sampling.init_cache(self.prior, 1, self.options)
    prompt = jnp.zeros((1, w) + self.frame_shape, jnp.int32)
    out = []
    for i, (start, new) in enumerate(self.windows(num_frames)):
      window_mel = jnp.asarray(padded[None, 4 * start:4 * (start + w)])
      codes, cache = compiled["sampler"](self.prior_params, window_mel, episode, z,
                                         jax.random.fold_in(rng, i), cache, prompt,
                                         jnp.int32(0 if i == 0 else o))
      if o:
        prompt = prompt.at[:, :o].set(codes[:, w - o:])
      out.append(compiled[new](self.dvae_params, codes[:, w - new:],
                               jnp.zeros((1, new), jnp.int32)))
    frames = np.concatenate([np.asarray(f[0]) for f in out])
    return frames[:num_frames]

  def flops(self, num_frames: int) -> float:
    """FLOPs of `run` for `num_frames` frames: per-window context + per-frame (and, MAR,
    per-code) steps x their trip counts + rendering (XLA counts a loop body once)."""
    sds, w, p, r = jax.ShapeDtypeStruct, self.window, self.prior, self.rows
    v = {"params": self.prior_params}
    mel, ep = sds((r, 4 * w, 80), jnp.float32), sds((r,), jnp.int32)
    z = sds((r, self.style_dim), jnp.float32)
    encode = lambda m, e, zz: p.apply(v, m, e, zz, method=p.encode_context)
    context = jax.eval_shape(encode, mel, ep, z)
    cache = jax.eval_shape(lambda: p.init_cache(r))
    prev = sds((r,) + self.frame_shape, jnp.int32)
    t = sds((), jnp.int32)
    sample = functools.partial(sampling.sample_logits, options=self.options)
    windows = self.windows(num_frames)
    total = len(windows) * flops_of(jax.jit(encode).lower(mel, ep, z).compile())
    if p.decoder == "far":
      def frame(ctx, prev, t, cache):
        logits, cache = p.apply(v, ctx, prev, t, cache, method=p.far_frame_step)
        return sample(jax.random.key(0), logits), cache
      total += len(windows) * w * flops_of(jax.jit(frame).lower(context, prev, t, cache).compile())
    else:
      frame = lambda ctx, prev, t, cache: p.apply(v, ctx, prev, t, cache, method=p.mar_frame_step)
      frame_ctx = jax.eval_shape(frame, context, prev, t, cache)[0]
      def code(fctx, prev, j, cache):
        logits, cache = p.apply(v, fctx, prev, j, cache, method=p.mar_code_step)
        return sample(jax.random.key(0), logits), cache
      per_frame = (flops_of(jax.jit(frame).lower(context, prev, t, cache).compile())
                   + p.codes_per_frame * flops_of(jax.jit(code).lower(
                       frame_ctx, sds((r,), jnp.int32), t, cache).compile()))
      total += len(windows) * w * per_frame
    frames_per_window = collections.Counter(n for _, n in windows)
    total += sum(count * flops_of(self._compile_render(n))
                 for n, count in frames_per_window.items())
    return total


def synthetic_mel(num_frames: int, seed: int = 0) -> np.ndarray:
  """Random log-mel [4N, 80] in the range of real speech (the decode cost ignores its values)."""
  return np.random.default_rng(seed).normal(-6.0, 3.0, (4 * num_frames, 80)).astype(np.float32)


def bench_generate(prior_config: ml_collections.ConfigDict,
                   dvae_config: ml_collections.ConfigDict, *, audio_seconds: float,
                   overlap: int = 4, temperature: float = 1.0, audio_guidance: float = 1.0,
                   compile_check: bool = True,
                   compile_lengths: tuple[float, float] = (30.0, 600.0),
                   peak: tuple[float, str] | None = None) -> dict[str, Any]:
  """Decodes `audio_seconds` of audio once (after a warm-up run) -> the JSON record."""
  g = Generation(prior_config, dvae_config, overlap=overlap, temperature=temperature,
                 audio_guidance=audio_guidance)
  num_frames = int(round(audio_seconds * FRAME_RATE))
  record = {}
  if compile_check:
    # Alternate the two lengths three times and keep each one's best: single compile times on
    # the 2-core machine vary by +-20% (the executables are the same; tests/integration/test_bench.py).
    short, long_ = (int(round(s * FRAME_RATE)) for s in compile_lengths)
    best = {short: math.inf, long_: math.inf}
    for n in (short, long_) * 3:
      best[n] = min(best[n], g.compile(n)[1])
    record.update({f"compile_s_{compile_lengths[0]:g}s": best[short],
                   f"compile_s_{compile_lengths[1]:g}s": best[long_],
                   "compile_ratio_long_over_short": best[long_] / best[short]})
  compiled, compile_s = g.compile(num_frames)
  mel = synthetic_mel(num_frames)
  warm = g.run(compiled, mel[:4 * min(num_frames, g.window)])  # one window: warm up
  start = time.perf_counter()
  frames = g.run(compiled, mel)
  wall = time.perf_counter() - start
  assert frames.shape == (num_frames,) + g.frame_hw + (3,) and warm.dtype == np.uint8
  flops = g.flops(num_frames)
  peak_flops, peak_source = peak or device_peak_flops()
  device = jax.devices()[0]
  record = {
      "what": "generate", "config": _config_name(), "decoder": g.prior.decoder,
      "device_kind": device.device_kind, "platform": device.platform,
      "num_devices": jax.device_count(), "jax_version": jax.__version__,
      "dtype": prior_config.dtype, "audio_seconds": audio_seconds, "frames": num_frames,
      "windows": len(g.windows(num_frames)), "window_frames": g.window,
      "overlap_frames": overlap, "audio_guidance": audio_guidance, "wall_s": wall,
      "rtf": wall / audio_seconds,
      "throughput": num_frames / wall, "throughput_unit": "frames/s",
      "step_s": wall / num_frames, "flops_per_step": flops / num_frames,
      "flops_total": flops, "achieved_flops_per_s": flops / wall,
      "peak_flops_per_s": peak_flops, "peak_flops_source": peak_source,
      "utilisation": flops / wall / peak_flops, **memory_of(compiled["sampler"]),
      "compile_s": compile_s, "num_params": _count(g.prior_params) + _count(g.dvae_params),
      **record}
  return record


# ---------------------------------------------------------------------------------------------
# Entry point


def _config_name() -> str:
  """The --config argument as given (file:preset and overrides), or '' outside the CLI."""
  if not FLAGS.is_parsed():
    return ""
  args = [a for a in sys.argv[1:] if a.startswith(("--config", "--dvae_config"))]
  return " ".join(args)


def main(argv):
  del argv
  if FLAGS.config is None:
    raise app.UsageError("--config is required")
  host_malloc.tune_for_cpu()  # before the first computation; the torch peer shares it
  peak = device_peak_flops()
  if FLAGS.what == "generate":
    record = bench_generate(FLAGS.config, FLAGS.dvae_config, audio_seconds=FLAGS.audio_seconds,
                            overlap=FLAGS.overlap_frames, temperature=FLAGS.temperature,
                            audio_guidance=FLAGS.audio_guidance,
                            compile_check=FLAGS.compile_check, peak=peak)
  else:
    w = (dvae_workload(FLAGS.config) if FLAGS.what == "dvae_step"
         else prior_workload(FLAGS.config, FLAGS.dvae_config))
    logging.info("%s: %d parameters, compiled in %.1f s", w.name, w.num_params, w.compile_s)
    record = bench_step(w, steps=FLAGS.steps, warmup=FLAGS.warmup, peer=FLAGS.peer,
                        peer_compile=FLAGS.peer_compile, block=FLAGS.block,
                        profile_dir=FLAGS.profile_dir, peak=peak)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
