"""The generation benchmark: the decode loop `nwt_jax.generate` runs, on random-init models.

`bench_generate` builds random-init models of a prior config and a dVAE config into an
`nwt_jax.inference.generator.Models` (with a random frame bank of `bank_frames` frames, as a
trained prior's workdir has one; 0: none) and times `Generator.stream` + `Generator.frames`,
window by window as `nwt_jax.inference.job.generate` runs them minus reading the audio and
writing the mp4, on `audio_seconds` of synthetic log-mel (the decode cost ignores its values). It
reports the real-time factor (wall seconds / audio seconds).

What a Generator compiles for an audio length is read off the Generator itself (`executables`):
its loop runs with each of its jitted functions replaced by a recorder that notes the abstract
arguments of every call and returns zeros of the output's shape, so a 600 s audio is walked in
seconds. The compile check compiles the executables of a 30 s and a 600 s audio from cold caches:
they are the same ones (windows and render chunks have one shape), so the ratio is ~1.

FLOPs: XLA's count of each recorded executable times its calls, except the sampler, whose scan
bodies XLA counts once: its per-window context encoding plus its per-frame (and, MAR, per-code)
steps, each compiled alone, times their trip counts.
"""

import collections
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from benchmarks import measure
from benchmarks import workloads
from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.inference import controls
from nwt_jax.inference import job
from nwt_jax.inference import generator as generator_lib
from nwt_jax.inference import sampling
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import prior as train_prior

SAMPLER = "_sampler"  # the Generator's jitted window sampler (its FLOPs are counted per step)
BANK_FRAMES = 256  # frames of the random frame bank


def random_models(prior_config: ml_collections.ConfigDict, dvae_config: ml_collections.ConfigDict,
                  *, bank_frames: int = BANK_FRAMES, seed: int = 0) -> generator_lib.Models:
  """Randomly initialised models of the two configs, as `generator.load_models` would give
  trained ones (window: the prior's training window), with a random frame bank."""
  dvae, disc = train_dvae.make_models(dvae_config)
  window = prior_config.data.frames_per_example or prior_config.prior.max_frames
  manifest = workloads.manifest_from_dvae(dvae_config, window)
  prior = train_prior.make_model(prior_config, manifest)
  key_d, key_p = jax.random.split(jax.random.key(seed))
  height, width = dvae_config.data.height, dvae_config.data.width
  none = optax.identity()  # the train states' parameters without optimiser state
  dvae_state = functools.partial(train_dvae.create_train_state, dvae, disc, none, none, height,
                                 width)
  dvae_params = jax.jit(lambda k: nn.unbox(dvae_state(k).params["generator"]))(key_d)
  example = train_prior.example_batch(manifest, train_prior.window_frames(prior_config, manifest))
  prior_state = functools.partial(train_prior.create_train_state, prior, none, example)
  prior_params = jax.jit(lambda k: nn.unbox(prior_state(k).params))(key_p)
  bank = None
  if bank_frames:
    shape = (bank_frames, *manifest["grid"], manifest["code_heads"])
    bank = np.random.default_rng(seed).integers(0, manifest["num_codes"], shape, np.int32)
  return generator_lib.Models(dvae, dvae_params, prior, prior_params, (height, width),
                              window=window, frame_bank=bank)


def inputs(models: generator_lib.Models, num_frames: int, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(log-mel [4N, 80], episodes [N], z [1, style_dim]) of a request: synthetic audio, episode
  0 throughout, the random style of `seed` (as `--style=random`)."""
  return (workloads.synthetic_mel(num_frames, seed), np.zeros(num_frames, np.int32),
          controls.style_latent(models, "random", seed)[None])


def decode(generator: generator_lib.Generator, mel: np.ndarray, episodes: np.ndarray,
           z: np.ndarray, seed: int, *, keep: bool = True) -> np.ndarray | None:
  """`job.generate`'s loop minus the file IO: the new codes are rendered as they come, a decoder
  chunk at a time. Returns the frames uint8 [B, T, H, W, 3] (keep) or None."""
  frames = []
  chunks = generator.stream(mel, episodes, z, seed)
  for rendered in job.render_in_chunks(generator, chunks, episodes):
    if keep:
      frames.append(rendered)
  return np.concatenate(frames, axis=1) if keep else None


@dataclasses.dataclass(frozen=True)
class Executable:
  """One executable a Generator compiles: its jitted function and abstract arguments."""
  attribute: str  # the Generator's attribute holding the jitted function
  args: tuple  # jax.ShapeDtypeStruct pytrees
  calls: int  # how often a decode calls it


def _abstract(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False))


class _Recorder:
  """Stands in for a jitted function: counts calls per abstract signature, returns zeros."""

  def __init__(self, fn: Callable):
    self.fn = fn
    self.calls = collections.Counter()
    self.args, self._zeros = {}, {}

  def __call__(self, *args):
    abstract = jax.tree.map(_abstract, args)
    leaves, tree = jax.tree.flatten(abstract)
    signature = (tree, tuple(leaves))
    self.calls[signature] += 1
    if signature not in self._zeros:
      self.args[signature] = abstract
      out = jax.eval_shape(self.fn, *abstract)
      self._zeros[signature] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)
    return self._zeros[signature]


def executables(make_generator: Callable[[], generator_lib.Generator], num_frames: int,
                seed: int = 0) -> dict[Any, Executable]:
  """What `decode` of a `num_frames`-frame request compiles, keyed by (attribute, signature):
  the Generator's loop run with recorders in place of its jitted functions."""
  g = make_generator()
  recorders = {name: _Recorder(fn) for name, fn in vars(g).items()
               if callable(fn) and hasattr(fn, "lower")}
  for name, recorder in recorders.items():
    setattr(g, name, recorder)
  decode(g, *inputs(g.models, num_frames, seed), seed, keep=False)
  return {(name, signature): Executable(name, r.args[signature], count)
          for name, r in recorders.items() for signature, count in r.calls.items()}


def compile_generator(make_generator: Callable[[], generator_lib.Generator],
                      wanted: dict[Any, Executable]
                      ) -> tuple[generator_lib.Generator, dict[Any, Any], float]:
  """A Generator built and `wanted` compiled from cold caches -> (the Generator, {key:
  compiled}, seconds)."""
  jax.clear_caches()
  start = time.perf_counter()
  g = make_generator()
  compiled = {key: getattr(g, e.attribute).lower(*e.args).compile() for key, e in wanted.items()}
  return g, compiled, time.perf_counter() - start


def _calls_per_attribute(wanted: dict[Any, Executable]) -> dict[str, int]:
  calls = collections.Counter()
  for e in wanted.values():
    calls[e.attribute.lstrip("_")] += e.calls
  return dict(calls)


def sampler_flops(models: generator_lib.Models, options: sampling.SamplingOptions,
                  num_windows: int, drawn_frames: int) -> float:
  """FLOPs of `num_windows` sampler calls drawing `drawn_frames` frames in all: per window the
  context encoding and a frame step per frame; MAR, a code step per code of a drawn frame
  (prompt frames skip their code loop). Rows: 2 per stream when guided."""
  sds, p, w = jax.ShapeDtypeStruct, models.prior, models.window_frames
  rows = 2 if options.guided else 1
  params = models.prior_params
  apply = lambda method: functools.partial(p.apply, method=method)
  encode = lambda v, *a: apply(p.encode_context)({"params": v}, *a)
  context_args = (sds((rows, constants.MEL_PER_FRAME * w, constants.N_MELS), jnp.float32),
                  sds((rows, w), jnp.int32), sds((rows, p.style_dim), jnp.float32))
  context = jax.eval_shape(encode, params, *context_args)
  cache = jax.eval_shape(lambda: p.init_cache(rows))
  prev = sds((rows, *p.grid, p.code_heads), jnp.int32)
  t = sds((), jnp.int32)
  flops = lambda fn, *args: measure.flops_of(jax.jit(fn).lower(params, *args).compile())

  def draw(logits, prev):
    key = jax.random.key(0)
    if options.change_threshold:
      return sampling.sample_changes(key, logits, prev, options)
    return sampling.sample_logits(key, logits, options)

  total = num_windows * flops(encode, *context_args)
  if p.decoder == "far":
    def frame(v, ctx, prev, t, cache):
      logits, cache = apply(p.far_frame_step)({"params": v}, ctx, prev, t, cache)
      return draw(logits, prev), cache
    return total + num_windows * w * flops(frame, context, prev, t, cache)
  frame = lambda v, *a: apply(p.mar_frame_step)({"params": v}, *a)
  frame_ctx = jax.eval_shape(frame, params, context, prev, t, cache)[0]
  code_prev = sds((rows,), jnp.int32)

  def code(v, fctx, prev, j, cache):
    logits, cache = apply(p.mar_code_step)({"params": v}, fctx, prev, j, cache)
    return draw(logits, prev), cache
  return (total + num_windows * w * flops(frame, context, prev, t, cache)
          + drawn_frames * p.codes_per_frame * flops(code, frame_ctx, code_prev, t, cache))


def bench_generate(prior_config: ml_collections.ConfigDict,
                   dvae_config: ml_collections.ConfigDict, *, audio_seconds: float,
                   options: sampling.SamplingOptions = sampling.SamplingOptions(),
                   overlap: int | None = None, opening: str = "bank",
                   bank_frames: int = BANK_FRAMES, seed: int = 0, compile_check: bool = True,
                   compile_lengths: tuple[float, float] = (30.0, 600.0),
                   peak: tuple[float, str] | None = None, config_name: str = "") -> dict[str, Any]:
  """Decodes `audio_seconds` of audio once (after a warm-up window) -> the JSON record."""
  models = random_models(prior_config, dvae_config, bank_frames=bank_frames, seed=seed)
  if overlap is not None and not 0 <= overlap < models.window_frames:
    raise errors.InvalidInput(f"--overlap_frames={overlap} must be in [0, "
                              f"{models.window_frames}) (the prior's window)")
  make = functools.partial(generator_lib.Generator, models, options, overlap=overlap,
                           opening=opening)
  num_frames = int(round(audio_seconds * constants.FPS))
  record = {}
  if compile_check:
    # Alternate the two lengths three times and keep each one's best: single compile times on
    # a 2-core machine vary by +-20%.
    lengths = [int(round(s * constants.FPS)) for s in compile_lengths]
    wanted = [executables(make, n, seed) for n in lengths]
    best = [math.inf, math.inf]
    for i in (0, 1) * 3:
      best[i] = min(best[i], compile_generator(make, wanted[i])[2])
    record.update({f"compile_s_{compile_lengths[0]:g}s": best[0],
                   f"compile_s_{compile_lengths[1]:g}s": best[1],
                   "compile_ratio_long_over_short": best[1] / best[0]})
  wanted = executables(make, num_frames, seed)
  g, compiled, compile_s = compile_generator(make, wanted)
  mel, episodes, z = inputs(models, num_frames, seed)
  first = min(num_frames, g.window)
  decode(g, mel[:constants.MEL_PER_FRAME * first], episodes[:first], z, seed, keep=False)
  start = time.perf_counter()
  decode(g, mel, episodes, z, seed, keep=False)
  wall = time.perf_counter() - start

  windows = list(generator_lib.windows(num_frames, g.window, g.overlap))
  drawn = sum(g.window - prompt for _, prompt, _ in windows)
  flops = sampler_flops(models, options, len(windows), drawn) + sum(
      e.calls * measure.flops_of(compiled[key]) for key, e in wanted.items()
      if e.attribute != SAMPLER)
  sampler = next(compiled[key] for key, e in wanted.items() if e.attribute == SAMPLER)
  return {
      "what": "generate", "config": config_name, "decoder": models.prior.decoder,
      **measure.device_fields(), "dtype": prior_config.dtype, "audio_seconds": audio_seconds,
      "frames": num_frames, "windows": len(windows), "window_frames": g.window,
      "overlap_frames": g.overlap, "temperature": options.temperature, "top_k": options.top_k,
      "top_p": options.top_p, "audio_guidance": options.audio_guidance,
      "change_threshold": options.change_threshold, "opening": opening,
      "bank_frames": bank_frames, "wall_s": wall, "rtf": wall / audio_seconds,
      "throughput": num_frames / wall, "throughput_unit": "frames/s",
      "step_s": wall / num_frames, "flops_per_step": flops / num_frames, "flops_total": flops,
      **measure.utilisation_fields(flops, wall, peak or measure.device_peak_flops()),
      **measure.memory_of(sampler), "compile_s": compile_s,
      "executable_calls": _calls_per_attribute(wanted),
      "num_params": measure.count_params(models.prior_params)
                    + measure.count_params(models.dvae_params),
      **record}
