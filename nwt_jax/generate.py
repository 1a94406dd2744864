"""Speech in, talking-head video out: `python -m nwt_jax.generate` (DESIGN §7).

    python -m nwt_jax.generate --dvae_workdir=runs/demo/dvae --prior_workdir=runs/demo/prior \\
        --audio=speech.wav --output=out.mp4 [--episode=3 | --episode_schedule=0:3,4.5:5] \\
        [--style=random | --style=reference:clip.mp4 | --style=z:0.1,-2,...] [--traverse_dim=K] \\
        [--temperature=1.0 --top_k=0 --top_p=1.0 --audio_guidance=1.0 --change_threshold=0 \\
         --opening=bank --seed=0]

Any audio ffmpeg reads (wav, mp3, flac, m4a, the audio track of a video; any sample rate or channel
count) is resampled to 24 kHz mono; its log-mel drives the prior. Codes are sampled in windows as long
as the prior's training windows (its config's `data.frames_per_example`) inside `jax.lax.scan` (`nwt_jax.sampling`): each window after the
first repeats the previous window's last `overlap` frames as a prompt, so memory and compilation do
not grow with the audio's length. A window that starts afresh (the first, and the first after an
episode switch) opens, for a FAR prior, on the training frame of the prior's frame bank that the
prior finds most likely there (`nwt_jax.frame_bank`). The dVAE decoder renders the codes, and the mp4 (H.264, the input
audio muxed as AAC) appears only when complete. Bad input is one `error: ...` line, exit code 1 and
no output file.
"""

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from absl import app
from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax import audio as audio_lib
from nwt_jax import compile_options
from nwt_jax import errors
from nwt_jax import frame_bank
from nwt_jax import host_malloc
from nwt_jax import sampling
from nwt_jax import synthetic
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib

FPS = synthetic.FPS
SAMPLE_RATE = synthetic.SAMPLE_RATE
SAMPLES_PER_FRAME = synthetic.SAMPLES_PER_FRAME
MEL_PER_FRAME = prior_lib.MEL_FRAMES_PER_FRAME
TRAVERSE_STEPS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # multiples of the prior's sigma (1) along one dim
DECODE_CHUNK = 32  # frames per dVAE decoder call (one compilation for any length)
OPENINGS = ("bank", "sample")  # Generator(opening=...): a fresh window's first frame


class GenerateError(errors.UserError, ValueError):
  """Input the generator cannot use; the message says what is wrong and what to do."""


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
  # (`nwt_jax.frame_bank`); None: the prior's workdir has none.
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
      raise GenerateError(
          "the dVAE and the prior do not belong together (dVAE vs prior: "
          + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
          + "); pass the dVAE workdir the prior was trained on.")


# ----------------------------------------------------------------------------------------------
# Parsing the user's controls


def parse_schedule(spec: str, num_frames: int, num_episodes: int) -> np.ndarray:
  """'0:3,4.5:5' (seconds:episode, from 0, increasing) -> int32 episode id per frame [T]."""
  times, episodes = [], []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    try:
      seconds, episode = item.split(":")
      times.append(float(seconds))
      episodes.append(int(episode))
    except ValueError:
      raise GenerateError(f"--episode_schedule item {item!r} is not SECONDS:EPISODE "
                          "(e.g. 0:3,4.5:5)") from None
  if not times:
    raise GenerateError(f"--episode_schedule {spec!r} is empty (e.g. 0:3,4.5:5)")
  if times[0] != 0 or any(b <= a for a, b in zip(times, times[1:])):
    raise GenerateError(f"--episode_schedule {spec!r}: times must start at 0 and increase")
  for episode in episodes:
    check_episode(episode, num_episodes)
  starts = np.round(np.array(times) * FPS).astype(np.int64)
  return np.asarray(episodes, np.int32)[np.searchsorted(starts, np.arange(num_frames),
                                                        side="right") - 1]


def check_episode(episode: int, num_episodes: int) -> None:
  if not 0 <= episode < num_episodes:
    raise GenerateError(f"episode {episode} is out of range: the models know episodes "
                        f"0..{num_episodes - 1}")


def parse_z(spec: str, style_dim: int) -> np.ndarray:
  """'0.1,-2,...' -> float32 [style_dim]."""
  try:
    z = np.array([float(v) for v in spec.split(",")], np.float32)
  except ValueError:
    raise GenerateError(f"--style=z:{spec} is not a comma-separated list of numbers") from None
  if z.shape != (style_dim,) or not np.all(np.isfinite(z)):
    raise GenerateError(f"--style=z: needs {style_dim} finite numbers (the prior's style_dim), "
                        f"got {len(z)}")
  return z


def style_latent(models: Models, spec: str, seed: int, *, reference_frames=None) -> np.ndarray:
  """The style z [style_dim] for --style: 'random' (N(0, I) from the seed), 'z:...' or
  'reference:PATH' (the posterior mean of the clip's first window; pass its frames in
  `reference_frames` or let it be read from PATH)."""
  style_dim = models.prior.style_dim
  if spec == "random":
    return np.random.default_rng([seed, 0x57]).standard_normal(style_dim).astype(np.float32)
  kind, _, value = spec.partition(":")
  if kind == "z" and value:
    return parse_z(value, style_dim)
  if kind == "reference" and value:
    if reference_frames is None:
      from nwt_jax import video_io  # pylint: disable=g-import-not-at-top
      try:
        with video_io.local_copy(value) as local:  # gs:// too
          reference_frames = video_io.read_video(local, height=models.frame_size[0],
                                                 width=models.frame_size[1])
      except (video_io.VideoIOError, OSError) as e:
        raise GenerateError(f"--style=reference: {e}") from None
    return reference_style(models, reference_frames)
  raise GenerateError(f"--style={spec!r}: use random, reference:CLIP.mp4 or z:V1,V2,...")


def reference_style(models: Models, frames: np.ndarray) -> np.ndarray:
  """Posterior mean z [style_dim] of a reference clip's first window (uint8 [T, H, W, 3])."""
  frames = np.asarray(frames)[:models.window_frames]
  if frames.ndim != 4 or not len(frames):
    raise GenerateError("the reference clip has no frames")
  codes = models.dvae.apply({"params": models.dvae_params}, jnp.asarray(frames)[None],
                            method=models.dvae.encode)
  mu, _ = models.prior.apply({"params": models.prior_params}, codes,
                             method=models.prior.encode_style)
  return np.asarray(mu[0], np.float32)


def traversal_latents(z: np.ndarray, dim: int) -> np.ndarray:
  """z with dimension `dim` moved by each of TRAVERSE_STEPS prior sigmas -> [5, style_dim]."""
  if not 0 <= dim < z.shape[0]:
    raise GenerateError(f"--traverse_dim={dim} is out of range: style_dim is {z.shape[0]}")
  zs = np.repeat(z[None], len(TRAVERSE_STEPS), axis=0)
  zs[:, dim] += np.asarray(TRAVERSE_STEPS, np.float32)
  return zs


# ----------------------------------------------------------------------------------------------
# Audio


def load_audio(path: str) -> np.ndarray:
  """Any audio ffmpeg reads -> float32 mono at 24 kHz, at least one video frame long."""
  from nwt_jax import video_io  # pylint: disable=g-import-not-at-top
  try:
    with video_io.local_copy(path) as local:  # gs:// too
      audio = video_io.read_audio(local, sample_rate=SAMPLE_RATE)
  except (video_io.VideoIOError, OSError) as e:
    raise GenerateError(f"cannot read audio: {e}") from None
  if len(audio) < SAMPLES_PER_FRAME:
    raise GenerateError(f"{path}: {len(audio) / SAMPLE_RATE * 1000:.1f} ms of audio is shorter "
                        f"than one video frame ({1000 / FPS:.1f} ms)")
  return audio


def audio_features(audio: np.ndarray) -> tuple[np.ndarray, int]:
  """24 kHz mono audio -> (log-mel [4T, 80] for its T whole frames, T)."""
  num_frames = len(audio) // SAMPLES_PER_FRAME
  mel = audio_lib.log_mel(audio[:num_frames * SAMPLES_PER_FRAME])
  return mel[:num_frames * MEL_PER_FRAME], num_frames


# ----------------------------------------------------------------------------------------------
# Decoding


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
    if opening not in OPENINGS:
      raise GenerateError(f"--opening must be one of {', '.join(OPENINGS)}, got {opening!r}")
    if options.guided and not models.prior.has_null_audio:
      raise GenerateError(f"--audio_guidance={options.audio_guidance} needs a prior trained "
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
      if prompt == 0 and self._bank is not None:  # a fresh window opens on a bank frame
        picked = self._pick_opening(self.models.prior_params, self._bank, self._bank_styles,
                                    jnp.asarray(window_mel), jnp.asarray(window_episodes),
                                    jnp.asarray(z))
        given[:, 0] = self.models.frame_bank[np.asarray(picked)]  # the host copy
        kept = 1
      codes, cache = self._sampler(
          self.models.prior_params, jnp.asarray(window_mel), jnp.asarray(window_episodes),
          jnp.asarray(z), jax.random.fold_in(rng, index), cache, jnp.asarray(given),
          jnp.int32(kept))
      codes = np.asarray(codes)[:, :stop - start]  # [B, frames of this window, ...]
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
    return jnp.round((jnp.clip(frames, -1, 1) + 1) * 127.5).astype(jnp.uint8)
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


# ----------------------------------------------------------------------------------------------
# The job


@dataclasses.dataclass(frozen=True)
class Request:
  """What to generate (the CLI's flags)."""
  audio: str  # input audio path (any format ffmpeg reads)
  output: str  # output .mp4 path
  episode: int = 0  # episode id for the whole video (unless episode_schedule)
  episode_schedule: str = ""  # 'SECONDS:EPISODE,...' from 0
  style: str = "random"  # 'random' | 'reference:PATH' | 'z:V1,V2,...'
  traverse_dim: int = -1  # >= 0: a grid video of z[dim] moved by -2..2 prior sigmas
  options: sampling.SamplingOptions = sampling.SamplingOptions()
  seed: int = 0
  opening: str = "bank"  # a fresh window's first frame: 'bank' | 'sample' (Generator)


def generate(models: Models, request: Request, *, progress: bool = False) -> dict[str, Any]:
  """Runs one request end to end and writes `request.output`; returns what it measured."""
  from nwt_jax import video_io  # pylint: disable=g-import-not-at-top
  directory = epath.Path(request.output).parent  # (gs:// has no directories to check)
  if not video_io.is_remote(request.output) and not directory.is_dir():
    raise GenerateError(f"--output {request.output}: directory {directory} does not exist")
  models.check_compatible()
  start = time.perf_counter()
  audio = load_audio(request.audio)
  mel, num_frames = audio_features(audio)
  num_episodes = models.prior.num_episodes
  if request.episode_schedule:
    episodes = parse_schedule(request.episode_schedule, num_frames, num_episodes)
  else:
    check_episode(request.episode, num_episodes)
    episodes = np.full(num_frames, request.episode, np.int32)
  z = style_latent(models, request.style, request.seed)[None]  # [1, style_dim]
  if request.traverse_dim >= 0:
    z = traversal_latents(z[0], request.traverse_dim)  # [5, style_dim]
  generator = Generator(models, request.options, batch=z.shape[0], opening=request.opening)
  chunks = generator.stream(mel, episodes, z, request.seed, progress=progress)
  # Each window's frames go to the encoder as they are rendered: memory stays flat with length.
  frames = (tile(generator.frames(codes, episodes[first:first + codes.shape[1]]))
            for first, codes in chunks)
  video_io.write_video(request.output, frames, fps=FPS,
                       audio=audio[:num_frames * SAMPLES_PER_FRAME], sample_rate=SAMPLE_RATE)
  seconds = time.perf_counter() - start
  audio_seconds = num_frames / FPS
  return {"output": request.output, "frames": num_frames, "audio_seconds": audio_seconds,
          "wall_seconds": seconds, "rtf": seconds / audio_seconds, "streams": int(z.shape[0]),
          "episodes": episodes, "z": z}


def load_models(dvae_workdir: str, prior_workdir: str) -> Models:
  """The latest checkpoints of a dVAE workdir and of a prior workdir trained on it."""
  from nwt_jax import train_dvae  # pylint: disable=g-import-not-at-top
  from nwt_jax import train_prior  # pylint: disable=g-import-not-at-top
  dvae, dvae_params, dvae_config = _restore("dVAE", train_dvae.restore_frozen, dvae_workdir)
  prior, prior_params, prior_config = _restore("prior", train_prior.restore_frozen,
                                               prior_workdir)
  models = Models(dvae, dvae_params, prior, prior_params,
                  (dvae_config.data.height, dvae_config.data.width),
                  window=prior_config.data.frames_per_example or prior.max_frames,
                  frame_bank=frame_bank.load(prior_workdir))
  models.check_compatible()
  return models


def _restore(what: str, restore, workdir: str):
  if not workdir or not epath.Path(workdir).is_dir():
    raise GenerateError(f"the {what} workdir {workdir!r} does not exist")
  try:
    return restore(workdir)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise GenerateError(f"the {what} workdir {workdir} holds no usable checkpoint ({e})") from None


def _define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing the module is free)."""
  flags.DEFINE_string("dvae_workdir", None, "Workdir of the trained dVAE.")
  flags.DEFINE_string("prior_workdir", None, "Workdir of the prior trained on that dVAE's codes.")
  flags.DEFINE_string("audio", None, "Input audio: any file ffmpeg reads (wav, mp3, m4a, a video).")
  flags.DEFINE_string("output", None, "Output .mp4 (H.264 + the input audio as AAC).")
  flags.DEFINE_integer("episode", 0, "Episode id for the whole video.")
  flags.DEFINE_string("episode_schedule", "",
                      "Episode changes as SECONDS:EPISODE,... from 0, e.g. 0:3,4.5:5.")
  flags.DEFINE_string("style", "random", "random | reference:CLIP.mp4 | z:V1,V2,... (style_dim).")
  flags.DEFINE_integer("traverse_dim", -1,
                       "If >= 0: a grid video of that style dimension moved by -2..2 sigma.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely codes (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: all).")
  flags.DEFINE_float("audio_guidance", 1.0,
                     "Classifier-free audio guidance weight (1: off; > 1 needs a prior trained "
                     "with prior.audio_dropout > 0).")
  flags.DEFINE_float("change_threshold", 0.0,
                     "FAR: a code keeps the previous frame's unless P(change) is above this "
                     "(0: plain sampling; the demo uses 0.3).")
  flags.DEFINE_enum("opening", "bank", list(OPENINGS),
                    "A FAR prior's first frame: the training frame it finds most likely there "
                    "(bank; drawn if the prior's workdir has no frame bank) or drawn (sample).")
  flags.DEFINE_integer("seed", 0, "Sampling seed (and of --style=random).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_malloc.tune_for_cpu()
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  missing = [f"--{n}" for n in ("dvae_workdir", "prior_workdir", "audio", "output")
             if not FLAGS[n].value]
  try:
    if missing:
      raise GenerateError(f"{', '.join(missing)} must be given")
    options = sampling.SamplingOptions(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p,
                                       FLAGS.audio_guidance, FLAGS.change_threshold)
    request = Request(FLAGS.audio, FLAGS.output, FLAGS.episode, FLAGS.episode_schedule,
                      FLAGS.style, FLAGS.traverse_dim, options, FLAGS.seed, FLAGS.opening)
    models = load_models(FLAGS.dvae_workdir, FLAGS.prior_workdir)
    result = generate(models, request, progress=True)
  except (errors.UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"Wrote {result['output']}: {result['frames']} frames, {result['audio_seconds']:.2f} s "
        f"of audio in {result['wall_seconds']:.2f} s (real-time factor "
        f"{result['rtf']:.3f}; {result['streams']} stream(s)).")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
