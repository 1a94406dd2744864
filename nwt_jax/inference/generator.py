"""The one decode loop: sample Memcodes for any length of audio, window by window, and render them.

Codes are sampled in windows as long as the prior's training windows (its config's
`data.frames_per_example`) inside `jax.lax.scan` (`nwt_jax.inference.sampling`): each window after
the first repeats the previous window's last `overlap` frames as a prompt, so memory and
compilation do not grow with the audio's length. A window that starts afresh (the first, and the
first after an episode switch) opens, for a FAR prior, on the training frame of the prior's frame
bank that the prior finds most likely there (`nwt_jax.data.frame_bank`). The dVAE decoder renders
the codes in fixed-size chunks, so one compilation serves any length.
"""

import dataclasses
import functools
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax import errors
from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.data import frame_bank
from nwt_jax.inference import sampling
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib
from nwt_jax.runtime import compile_options
from nwt_jax.training import restore

MEL_PER_FRAME = constants.MEL_PER_FRAME
DECODE_CHUNK = 32  # frames per dVAE decoder call (one compilation for any length)


@dataclasses.dataclass(frozen=True)
class Models:
  """A trained dVAE and the prior trained on its codes."""
  dvae: dvae_lib.DVAE
  dvae_params: Any
  prior: prior_lib.Prior
  prior_params: Any
  frame_size: tuple[int, int]  # (H, W) of the dVAE's frames
  window: int = 0  # frames per sampling window: the prior's training window (0: max_frames)
  # Training frames' codes [N, gh, gw, K] a FAR prior's first frame is retrieved from
  # (`nwt_jax.data.frame_bank`); None: the prior's workdir has none.
  frame_bank: np.ndarray | None = None

  @property
  def window_frames(self) -> int:
    return self.window or self.prior.max_frames

  def check_compatible(self) -> None:
    """The prior must model exactly this dVAE's code grid, heads, codebook and episodes."""
    grid = tuple(s // self.dvae.downsample_factor for s in self.frame_size)
    ours = dict(grid=grid, code_heads=self.dvae.heads, num_codes=self.dvae.num_codes,
                num_episodes=self.dvae.num_episodes)
    theirs = dict(grid=tuple(self.prior.grid), code_heads=self.prior.code_heads,
                  num_codes=self.prior.num_codes, num_episodes=self.prior.num_episodes)
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if differ:
      raise errors.GenerateError(
          "the dVAE and the prior do not belong together (dVAE vs prior: "
          + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
          + "); pass the dVAE workdir the prior was trained on.")


def windows(num_frames: int, window: int, overlap: int, cuts: Iterable[int] = ()
             ) -> Iterator[tuple[int, int, int]]:
  """(start, prompt frames, stop) of each window covering [0, num_frames): a window after the
  first starts `overlap` frames before the previous one's stop and takes those frames as its
  prompt, except at a cut (a frame where the episode changes), where a window stops and the next
  starts afresh, with no prompt."""
  if not 0 <= overlap < window:
    raise ValueError(f"overlap must be in [0, {window}), got {overlap}")
  cuts = sorted(c for c in set(cuts) if 0 < c < num_frames)
  start, prompt = 0, 0
  while True:
    cut = next((c for c in cuts if start < c <= start + window), None)
    stop = min(start + window, num_frames) if cut is None else cut
    yield start, prompt, stop
    if stop >= num_frames:
      return
    start, prompt = (cut, 0) if cut is not None else (stop - overlap, overlap)


class Generator:
  """Samples codes for any length of audio with one compiled sampler and renders them."""

  def __init__(self, models: Models, options: sampling.SamplingOptions, *, batch: int = 1,
               overlap: int | None = None, opening: str = "bank"):
    """opening: how a window that starts afresh (the first, and the first after an episode
    switch) gets its first frame: 'bank' (a FAR prior with a frame bank: of the bank frames the
    prior finds most likely there, the one nearest the style, `sampling.pick_opening`; otherwise
    drawn) or 'sample' (drawn)."""
    models.check_compatible()
    if opening not in sampling.OPENINGS:
      raise errors.GenerateError(f"--opening must be one of {', '.join(sampling.OPENINGS)}, "
                                 f"got {opening!r}")
    if options.guided and not models.prior.has_null_audio:
      raise errors.GenerateError(f"--audio_guidance={options.audio_guidance} needs a prior trained "
                                 "with prior.audio_dropout > 0; this one was not (use 1)")
    self.models, self.batch = models, batch
    # Windows as long as the prior's training windows: positions past them were never trained.
    self.window = models.window_frames
    self.overlap = self.window // 4 if overlap is None else overlap
    self.options = options
    self._sampler = sampling.make_sampler(models.prior, options)
    self._bank = None
    if opening == "bank" and models.frame_bank is not None and models.prior.decoder == "far":
      self._bank = jnp.asarray(models.frame_bank)
      self._bank_styles = jax.jit(functools.partial(sampling.opening_styles, models.prior))(
          models.prior_params, self._bank)
      self._pick_opening = jax.jit(functools.partial(
          sampling.pick_opening, models.prior, options=options))
    self._render = jax.jit(make_renderer(models.dvae),
                           compiler_options=compile_options.dvae())
    self._frame_shape = tuple(models.prior.grid) + (models.prior.code_heads,)

  def stream(self, mel: np.ndarray, episodes: np.ndarray, z: np.ndarray, seed: int, *,
             progress: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first frame, codes int32 [B, n, gh, gw, K]) for each window's new frames, in order.

    mel [4T, 80] or [B, 4T, 80] (per stream), episodes int [T] or [B, T], z [B, style_dim]. Only
    the previous window's prompt frames are kept, so memory does not grow with T.
    """
    batch, w = z.shape[0], self.window
    if batch != self.batch:
      raise ValueError(f"z has {batch} rows, the generator was built for {self.batch}")
    num_frames = np.shape(episodes)[-1]
    mel = np.broadcast_to(mel, (batch,) + np.shape(mel)[-2:])  # [B, 4T, 80]
    episodes = np.broadcast_to(episodes, (batch, num_frames))  # [B, T]
    if mel.shape[1] != MEL_PER_FRAME * num_frames:
      raise ValueError(f"mel {mel.shape} does not cover {num_frames} frames")
    cache = sampling.init_cache(self.models.prior, batch, self.options)
    rng = jax.random.key(seed)
    # Silence (the log floor) and the last episode pad the final window to the compiled length.
    floor = math.log(audio_lib.LOG_FLOOR)
    given = np.zeros((batch, w) + self._frame_shape, np.int32)  # the prompt, then zeros
    # The identity anchor (priors with `anchor`): each stream's opening frame, until a cut.
    anchor = np.full((batch,) + self._frame_shape, -1, np.int32)
    bar = _progress_bar(num_frames, progress)
    # An episode switch is a cut: in training a clip never changes episode, so the prior has
    # only learnt to draw a new episode's look from the BOS frame at a window's start, and a
    # window continued across the switch keeps copying the old look. The streams of a batch
    # share their windows: a switch in one is a cut for all.
    cuts = np.flatnonzero((episodes[:, 1:] != episodes[:, :-1]).any(axis=0)) + 1
    for index, (start, prompt, stop) in enumerate(windows(num_frames, w, self.overlap, cuts)):
      window_mel = np.full((batch, MEL_PER_FRAME * w, mel.shape[-1]), floor, np.float32)
      window_mel[:, :MEL_PER_FRAME * (stop - start)] = mel[:, MEL_PER_FRAME * start:
                                                           MEL_PER_FRAME * stop]
      window_episodes = np.empty((batch, w), np.int32)
      window_episodes[:, :stop - start] = episodes[:, start:stop]
      window_episodes[:, stop - start:] = episodes[:, stop - 1:stop]
      kept = prompt  # frames of `given` the sampler keeps
      if prompt == 0:  # a fresh window: a new anchor (its opening frame)
        anchor[:] = -1
        if self._bank is not None:  # it opens on a bank frame
          picked = self._pick_opening(self.models.prior_params, self._bank, self._bank_styles,
                                      jnp.asarray(window_mel), jnp.asarray(window_episodes),
                                      jnp.asarray(z))
          given[:, 0] = anchor[:] = self.models.frame_bank[np.asarray(picked)]  # the host copy
          kept = 1
      codes, cache = self._sampler(
          self.models.prior_params, jnp.asarray(window_mel), jnp.asarray(window_episodes),
          jnp.asarray(z), jax.random.fold_in(rng, index), cache, jnp.asarray(given),
          jnp.int32(kept), jnp.asarray(anchor))
      codes = np.asarray(codes)[:, :stop - start]  # [B, frames of this window, ...]
      if prompt == 0 and anchor[0, 0, 0, 0] < 0:  # the drawn opening frame is the anchor
        anchor[:] = codes[:, 0]
      given[:] = 0
      if self.overlap:  # the next window starts `overlap` frames before this one's end
        given[:, :self.overlap] = codes[:, -self.overlap:]
      bar.update(stop - start - prompt)
      yield start + prompt, codes[:, prompt:]
    bar.close()

  def codes(self, mel: np.ndarray, episodes: np.ndarray, z: np.ndarray, seed: int, *,
            progress: bool = False) -> np.ndarray:
    """All codes int32 [B, T, gh, gw, K] of `stream(...)` in one array."""
    return np.concatenate([codes for _, codes in self.stream(mel, episodes, z, seed,
                                                             progress=progress)], axis=1)

  def frames(self, codes: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """codes [B, T, gh, gw, K], episodes [T] or [B, T] -> uint8 frames [B, T, H, W, 3]."""
    batch, num_frames = codes.shape[:2]
    flat = codes.reshape((-1,) + codes.shape[2:])
    flat_episodes = np.broadcast_to(episodes, (batch, num_frames)).reshape(-1)
    pad = -len(flat) % DECODE_CHUNK
    flat = np.pad(flat, ((0, pad),) + ((0, 0),) * 3)
    flat_episodes = np.pad(flat_episodes, (0, pad), mode="edge")
    chunks = [np.asarray(self._render(self.models.dvae_params, flat[i:i + DECODE_CHUNK],
                                      flat_episodes[i:i + DECODE_CHUNK]))
              for i in range(0, len(flat), DECODE_CHUNK)]
    frames = np.concatenate(chunks)[:batch * num_frames]
    return frames.reshape((batch, num_frames) + frames.shape[1:])


def make_renderer(dvae: dvae_lib.DVAE):
  """(params, codes [N, gh, gw, K], episode [N]) -> uint8 frames [N, H, W, 3]."""
  def render(params, codes, episode):
    frames = dvae.apply({"params": params}, codes, episode, method=dvae.decode)
    return dvae_lib.frames_to_uint8(frames)
  return render


def _progress_bar(total: int, enabled: bool):
  """A tqdm bar over frames on stderr (disabled: a no-op)."""
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, unit="frame", desc="sampling", file=sys.stderr,
                   disable=not enabled)


def tile(frames: np.ndarray) -> np.ndarray:
  """[B, T, H, W, 3] -> [T, H, B*W, 3]: the B streams side by side (a traversal grid)."""
  batch, num_frames, height, width, channels = frames.shape
  return frames.transpose(1, 2, 0, 3, 4).reshape(num_frames, height, batch * width, channels)


def load_models(dvae_workdir: str, prior_workdir: str, step: int | None = None) -> Models:
  """The latest checkpoint of a dVAE workdir and the prior's checkpoint `step` (default: the
  latest) of a prior workdir trained on it."""
  dvae, dvae_params, dvae_config = _restore("dVAE", restore.dvae, dvae_workdir)
  prior, prior_params, prior_config = _restore(
      "prior", functools.partial(restore.prior, step=step), prior_workdir)
  models = Models(dvae, dvae_params, prior, prior_params,
                  (dvae_config.data.height, dvae_config.data.width),
                  window=prior_config.data.frames_per_example or prior.max_frames,
                  frame_bank=frame_bank.load(prior_workdir))
  models.check_compatible()
  return models


def _restore(what: str, restore, workdir: str):
  if not workdir or not epath.Path(workdir).is_dir():
    raise errors.GenerateError(f"the {what} workdir {workdir!r} does not exist")
  try:
    return restore(workdir)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise errors.GenerateError(
        f"the {what} workdir {workdir} holds no usable checkpoint ({e})") from None
