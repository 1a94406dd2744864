"""Autoregressive sampling of Memcode indices with `jax.lax.scan` and a preallocated KV cache.

The loops are pure functions of step functions (after flax's lm1b `temperature_sampler` and
gemma's sampler), so a stub model can drive them in tests:

  * `sample_frames(frame_to_logits, cache, rng, prompt, num_prompt_frames, options)` (FAR): one
    scan step per frame, `frame_to_logits(prev_frame [B, *F], t, cache) -> (logits [B, *F, V],
    cache)`.
  * `sample_frames_by_code(frame_to_context, code_to_logits, ...)` (MAR): a scan over frames with
    a scan over the frame's L codes inside, `frame_to_context(prev_frame [B, L], t, cache) ->
    (ctx, cache)` and `code_to_logits(ctx, prev_code [B], j, cache) -> (logits [B, V], cache)`.

Frames t < num_prompt_frames are copied from `prompt` instead of sampled (their steps still run, so
the cache sees them): a long audio is decoded as fixed-size windows whose first frames repeat the
end of the previous window, each window reusing the same compiled function and the same (donated)
cache, so memory and compilation do not grow with the audio's length.

`opening_scores` / `pick_opening` choose a FAR window's first frame from a bank of training frames
(`nwt_jax.data.frame_bank`) instead of drawing it from the BOS frame.

`sample_prior` binds these loops to `nwt_jax.models.prior.Prior`; `make_sampler` jits it once:

    options = SamplingOptions(temperature=0.9, top_k=50, audio_guidance=2.0)
    sampler = make_sampler(model, options)
    cache = init_cache(model, batch, options)
    codes, cache = sampler(params, mel, episode, z, rng, cache, prompt, num_prompt_frames)
"""

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.runtime import compile_options
from nwt_jax.models import prior as prior_lib

PyTree = Any
# pick_opening: the bank frames, most likely first, among which the nearest style is taken.
OPENING_CANDIDATES = 64
# How a window that starts afresh gets its first frame: from the frame bank or drawn (Generator).
OPENINGS = ("bank", "sample")
FrameToLogits = Callable[[jax.Array, jax.Array, PyTree], tuple[jax.Array, PyTree]]
FrameToContext = Callable[[jax.Array, jax.Array, PyTree], tuple[PyTree, PyTree]]
CodeToLogits = Callable[[PyTree, jax.Array, jax.Array, PyTree], tuple[jax.Array, PyTree]]


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How a code is drawn from its logits (hashable: a static part of the jitted sampler)."""
  temperature: float = 1.0  # softmax temperature; 0 draws the argmax (greedy)
  top_k: int = 0  # sample among the k most likely codes only (0: no cut)
  top_p: float = 1.0  # sample among the fewest codes holding this much probability (1: no cut)
  # Classifier-free guidance on the audio: log-probs null + w * (audio - null), where null is
  # the prior's prediction with its learned null audio (models trained with audio_dropout > 0).
  # w = 1 is plain sampling; w > 1 exaggerates what the audio changes (the mouth), at twice the
  # compute (the two predictions run as one batch of 2B).
  audio_guidance: float = 1.0
  # FAR: a code keeps the previous frame's code unless the (guided) probability that it changes
  # is above this; where it changes, the new code is drawn from the other codes (temperature,
  # top-k, top-p). A frame's codes are drawn independently, so each of its ~900 codes changing
  # with its small probability puts stray pieces (an eye on a cheek) into every frame, which
  # the copy gate then keeps; a mouth that should move has a large change probability and still
  # moves. 0: plain sampling. Measured on `tiny` in docs/experiments.md.
  change_threshold: float = 0.0

  @property
  def guided(self) -> bool:
    return self.audio_guidance != 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.audio_guidance < 0:
      raise ValueError(f"audio_guidance must be >= 0, got {self.audio_guidance}")
    if not 0 <= self.change_threshold < 1:
      raise ValueError(f"change_threshold must be in [0, 1), got {self.change_threshold}")


def sample_logits(rng: jax.Array, logits: jax.Array, options: SamplingOptions) -> jax.Array:
  """Draws int32 codes [...] from logits [..., V] with temperature, top-k and top-p cuts."""
  logits = logits.astype(jnp.float32)
  if options.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / options.temperature
  floor = jnp.finfo(jnp.float32).min
  if options.top_k:
    kth = jax.lax.top_k(logits, options.top_k)[0][..., -1:]  # [..., 1]
    logits = jnp.where(logits < kth, floor, logits)
  if options.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # [..., V] descending
    cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    # Keep every code up to and including the first at which the cumulative mass reaches top_p.
    cut = jnp.sum(cumulative < options.top_p, axis=-1, keepdims=True)  # [..., 1]
    threshold = jnp.take_along_axis(ordered, cut, axis=-1)
    logits = jnp.where(logits < threshold, floor, logits)
  # Inverse-CDF draw: one uniform per code, where jax.random.categorical draws Gumbel noise for
  # every logit (measured by nwt_jax.bench on the 2-core CPU for a tiny FAR frame, 224 x 4 codes
  # of 256: 1.8 ms vs 4.8 ms, most of a frame step's sampling time). Codes whose probability
  # underflows to 0 (the cuts above) have a flat CDF step and are never drawn.
  cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [..., V]
  u = jax.random.uniform(rng, logits.shape[:-1] + (1,)) * cdf[..., -1:]  # in [0, total mass)
  return jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def sample_changes(rng: jax.Array, logits: jax.Array, prev: jax.Array,
                   options: SamplingOptions, hidden: np.ndarray | None = None) -> jax.Array:
  """`options.change_threshold`'s draw: codes [...] from logits [..., V] and the previous frame's
  codes prev [...]: prev where P(prev) >= 1 - change_threshold (P at temperature 1), else a draw
  from the other codes. Where prev is -1 or `hidden` (bool, prev's trailing shape) marks a code
  the prior does not see (`Prior.hidden_codes()`), a plain draw."""
  if hidden is not None and np.any(hidden):
    prev = jnp.where(hidden, -1, prev)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  keep = (prev >= 0) & (jnp.take_along_axis(log_p, jnp.maximum(prev, 0)[..., None], axis=-1)[
      ..., 0] >= jnp.log1p(-options.change_threshold))
  others = jnp.where(jax.nn.one_hot(prev, logits.shape[-1], dtype=bool), -jnp.inf, log_p)
  return jnp.where(keep, prev, sample_logits(rng, others, options))


@flax.struct.dataclass
class FrameLoopState:
  """What one frame step hands the next."""
  prev: jax.Array  # int32 [B, *F]: the codes of the last frame
  cache: PyTree  # the model's KV cache


@flax.struct.dataclass
class CodeLoopState:
  """What one code step (MAR) hands the next, inside a frame."""
  prev: jax.Array  # int32 [B]: the last code
  cache: PyTree  # the model's KV cache


def _check_prompt(prompt: jax.Array) -> None:
  if prompt.ndim < 3 or not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"prompt must be int [B, T, ...], got {prompt.dtype}{prompt.shape}")


def sample_frames(frame_to_logits: FrameToLogits, cache: PyTree, rng: jax.Array,
                  prompt: jax.Array, num_prompt_frames: jax.Array | int,
                  options: SamplingOptions, hidden: np.ndarray | None = None
                  ) -> tuple[jax.Array, PyTree]:
  """FAR: samples every code of a frame at once, frame after frame.

  prompt: int [B, T, *F], the window's frame count T and frame shape F (frames >= the prompt's
  length are ignored: pass zeros where nothing is known). Returns (int32 codes [B, T, *F], cache).
  Frame t's draw uses `fold_in(rng, t)`; with options.change_threshold, frames t >= 1 keep the
  previous frame's codes except where they are likely to change (`sample_changes`), apart from
  the codes `hidden` (bool [*F]) marks, which the prior never sees in the previous frame and
  which are drawn plainly.
  """
  _check_prompt(prompt)
  prompt = prompt.astype(jnp.int32)
  frames = jnp.moveaxis(prompt, 1, 0)  # [T, B, *F]: scan over the leading axis

  def step(state: FrameLoopState, xs):
    t, given = xs  # given: [B, *F]
    logits, cache = frame_to_logits(state.prev, t, state.cache)  # [B, *F, V]
    key = jax.random.fold_in(rng, t)
    drawn = sample_logits(key, logits, options)  # [B, *F]
    if options.change_threshold:
      drawn = jnp.where(t > 0, sample_changes(key, logits, state.prev, options, hidden), drawn)
    codes = jnp.where(t < num_prompt_frames, given, drawn)
    return FrameLoopState(prev=codes, cache=cache), codes

  init = FrameLoopState(prev=jnp.zeros_like(frames[0]), cache=cache)
  final, codes = jax.lax.scan(step, init, (jnp.arange(frames.shape[0]), frames))
  return jnp.moveaxis(codes, 0, 1), final.cache  # [T, B, *F] -> [B, T, *F]


def sample_frames_by_code(frame_to_context: FrameToContext, code_to_logits: CodeToLogits,
                          cache: PyTree, rng: jax.Array, prompt: jax.Array,
                          num_prompt_frames: jax.Array | int,
                          options: SamplingOptions) -> tuple[jax.Array, PyTree]:
  """MAR: samples a frame's codes one by one (raster order), frame after frame.

  prompt: int [B, T, L] (the frame's L codes flattened in decoding order). Prompt frames skip
  their code loop. Returns (int32 codes [B, T, L], cache). Code j of frame t uses
  `fold_in(fold_in(rng, t), j)`.
  """
  _check_prompt(prompt)
  prompt = prompt.astype(jnp.int32)
  frames = jnp.moveaxis(prompt, 1, 0)  # [T, B, L]
  length = frames.shape[-1]

  def code_step(ctx, frame_rng, state: CodeLoopState, j):
    logits, cache = code_to_logits(ctx, state.prev, j, state.cache)  # [B, V]
    code = sample_logits(jax.random.fold_in(frame_rng, j), logits, options)  # [B]
    return CodeLoopState(prev=code, cache=cache), code

  def frame_step(state: FrameLoopState, xs):
    t, given = xs  # given: [B, L]
    ctx, cache = frame_to_context(state.prev, t, state.cache)

    def draw(cache):
      body = functools.partial(code_step, ctx, jax.random.fold_in(rng, t))
      init = CodeLoopState(prev=jnp.zeros_like(given[:, 0]), cache=cache)
      final, codes = jax.lax.scan(body, init, jnp.arange(length))  # codes [L, B]
      return codes.T, final.cache  # [B, L]

    codes, cache = jax.lax.cond(t < num_prompt_frames, lambda c: (given, c), draw, cache)
    return FrameLoopState(prev=codes, cache=cache), codes

  init = FrameLoopState(prev=jnp.zeros_like(frames[0]), cache=cache)
  final, codes = jax.lax.scan(frame_step, init, (jnp.arange(frames.shape[0]), frames))
  return jnp.moveaxis(codes, 0, 1), final.cache  # [T, B, L] -> [B, T, L]


def init_cache(model: prior_lib.Prior, batch: int,
               options: SamplingOptions = SamplingOptions()) -> PyTree:
  """The KV cache `sample_prior` needs for `batch` streams (2 * batch rows when guided)."""
  return model.init_cache(2 * batch if options.guided else batch)


def guide(logits: jax.Array, weight: float) -> jax.Array:
  """Logits [2B, ..., V] (rows B.. with the null audio) -> guided log-probs [B, ..., V]."""
  with_audio, without = jnp.split(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 2)
  return without + weight * (with_audio - without)


def _twice(x: jax.Array) -> jax.Array:
  return jnp.concatenate([x, x], axis=0)


def sample_prior(model: prior_lib.Prior, params: PyTree, mel: jax.Array, episode: jax.Array,
                 z: jax.Array, rng: jax.Array, cache: PyTree, prompt: jax.Array | None = None,
                 num_prompt_frames: jax.Array | int = 0, anchor: jax.Array | None = None, *,
                 options: SamplingOptions = SamplingOptions()) -> tuple[jax.Array, PyTree]:
  """Samples one window of codes from the prior.

  mel [B, 4T, bins] with T <= model.max_frames; episode [B] or [B, T] (per frame); z
  [B, style_dim]; cache from `model.init_cache(B)` (any earlier contents are overwritten before
  they are read, so a window may reuse the last window's cache); prompt int [B, T, gh, gw, K]
  whose first num_prompt_frames frames are kept (None: no prompt). With options.audio_guidance
  != 1 the cache is `init_cache(model, B, options)`'s (2B rows: with and without the audio).
  anchor int [B, gh, gw, K]: for a prior with `anchor`, the frame every frame t >= 1 sees as its
  identity anchor (the stream's opening frame); None or -1 rows: the window's frame 0.
  Returns (int32 codes [B, T, gh, gw, K], cache).
  """
  variables = {"params": params}
  batch, frames = mel.shape[0], mel.shape[1] // prior_lib.MEL_FRAMES_PER_FRAME
  if options.change_threshold and model.decoder != "far":
    raise ValueError("change_threshold is for FAR priors (a MAR prior draws a frame's codes one "
                     "by one, each seeing the codes before it); use 0")
  if options.guided and not model.has_null_audio:
    raise ValueError("audio_guidance needs a prior trained with audio_dropout > 0 (it learns "
                     "the null audio guidance contrasts with); sample with audio_guidance=1")
  frame_shape = model.grid + (model.code_heads,)  # (gh, gw, K)
  if prompt is None:
    prompt = jnp.zeros((batch, frames) + frame_shape, jnp.int32)
  if prompt.shape != (batch, frames) + frame_shape:
    raise ValueError(f"prompt {prompt.shape} != {(batch, frames) + frame_shape}")
  if options.guided:  # rows [0, B) see the audio, rows [B, 2B) the null audio
    drop = jnp.arange(2 * batch) >= batch
    context = model.apply(variables, _twice(mel), _twice(jnp.asarray(episode)), _twice(z),
                          drop_audio=drop, method=model.encode_context)
    double, combine = _twice, functools.partial(guide, weight=options.audio_guidance)
  else:
    context = model.apply(variables, mel, episode, z, method=model.encode_context)
    double = combine = lambda x: x
  if model.anchor:
    if anchor is None:
      anchor = jnp.full((batch,) + frame_shape, -1, jnp.int32)
    cache = {**cache, "anchor": double(jnp.asarray(anchor, jnp.int32))}

  if model.decoder == "far":
    def frame_to_logits(prev, t, cache):
      logits, cache = model.apply(variables, context, double(prev), t, cache,
                                  method=model.far_frame_step)
      return combine(logits), cache
    return sample_frames(frame_to_logits, cache, rng, prompt, num_prompt_frames, options,
                         hidden=model.hidden_codes())

  def frame_to_context(prev, t, cache):
    prev = double(prev.reshape((batch,) + frame_shape))  # [B, L] -> [B (2B), gh, gw, K]
    return model.apply(variables, context, prev, t, cache, method=model.mar_frame_step)

  def code_to_logits(ctx, prev, j, cache):
    logits, cache = model.apply(variables, ctx, double(prev), j, cache,
                                method=model.mar_code_step)
    return combine(logits), cache

  flat_prompt = prompt.reshape(batch, frames, -1)  # [B, T, L], raster order, head-minor
  codes, cache = sample_frames_by_code(frame_to_context, code_to_logits, cache, rng, flat_prompt,
                                       num_prompt_frames, options)
  return codes.reshape((batch, frames) + frame_shape), cache  # [B, T, L] -> [B, T, gh, gw, K]


def opening_scores(model: prior_lib.Prior, params: PyTree, bank: jax.Array, mel: jax.Array,
                   episode: jax.Array, z: jax.Array, *,
                   options: SamplingOptions = SamplingOptions()) -> jax.Array:
  """Log-likelihood float32 [B, N] of each bank frame (int [N, gh, gw, K]) as frame 0 of the
  window (mel [B, 4T, bins], episode [B] or [B, T], z [B, style_dim]) under the prior, guided as
  the sampler guides (`nwt_jax.data.frame_bank`). FAR only: frame 0's codes are independent given the
  BOS frame, so a frame's likelihood is a sum over its codes."""
  if model.decoder != "far":
    raise ValueError("opening_scores needs a FAR prior")
  batch, frames = mel.shape[0], mel.shape[1] // prior_lib.MEL_FRAMES_PER_FRAME
  codes = jnp.zeros((batch, frames) + bank.shape[1:], jnp.int32)  # frame 0 sees only BOS
  variables = {"params": params}
  if options.guided:
    drop = jnp.arange(2 * batch) >= batch
    logits = model.apply(variables, _twice(codes), _twice(mel), _twice(jnp.asarray(episode)),
                         train=False, z=_twice(z), drop_audio=drop)[0][:, 0]
    log_p = guide(logits, options.audio_guidance)  # [B, gh, gw, K, V]
  else:
    logits = model.apply(variables, codes, mel, episode, train=False, z=z)[0][:, 0]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  flat_bank = bank.reshape(bank.shape[0], -1, 1).astype(jnp.int32)  # [N, L, 1]
  # One row at a time: [N, L] gathers, not a [B, N, L] array.
  return jax.lax.map(lambda row: jnp.take_along_axis(
      row.reshape(1, -1, row.shape[-1]), flat_bank, axis=2)[..., 0].sum(-1), log_p)


def opening_styles(model: prior_lib.Prior, params: PyTree, bank: jax.Array) -> jax.Array:
  """The style posterior mean float32 [N, style_dim] of each bank frame (a one-frame clip)."""
  return model.apply({"params": params}, bank[:, None], method=model.encode_style)[0]


def pick_opening(model: prior_lib.Prior, params: PyTree, bank: jax.Array,
                 bank_styles: jax.Array, mel: jax.Array, episode: jax.Array, z: jax.Array, *,
                 options: SamplingOptions = SamplingOptions(),
                 candidates: int = OPENING_CANDIDATES) -> jax.Array:
  """Each stream's opening frame, an index int32 [B] into the bank: of the `candidates` frames
  most likely as frame 0 (`opening_scores`), the one whose style posterior mean (`bank_styles`,
  from `opening_styles`) is nearest z. The likelihood alone weighs the mouth and the episode's
  look as much as the camera and zoom, and a bank holds only its clips' few camera settings:
  measured on `tiny` (docs/experiments.md), it raised the copied-style error by a sixth."""
  scores = opening_scores(model, params, bank, mel, episode, z, options=options)  # [B, N]
  top = jax.lax.top_k(scores, min(candidates, bank.shape[0]))[1]  # [B, M]
  distance = jnp.sum((bank_styles[top] - z[:, None]) ** 2, axis=-1)  # [B, M]
  return jnp.take_along_axis(top, jnp.argmin(distance, axis=1)[:, None], axis=1)[:, 0]


def make_sampler(model: prior_lib.Prior, options: SamplingOptions = SamplingOptions()):
  """`sample_prior` bound to a model and options, jitted once, its cache argument donated.

  Call as sampler(params, mel, episode, z, rng, cache, prompt, num_prompt_frames[, anchor]); windows of the
  same shapes reuse one compilation (num_prompt_frames is traced).
  """
  return jax.jit(functools.partial(sample_prior, model, options=options),
                 donate_argnames=("cache",),
                 compiler_options=compile_options.prior())
