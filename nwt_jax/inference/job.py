"""One generation request end to end: audio file in, mp4 (H.264 with the input audio as AAC) out.

Any audio ffmpeg reads (wav, mp3, flac, m4a, the audio track of a video; any sample rate or channel
count) is resampled to 24 kHz mono; its log-mel drives the prior. The mp4 appears only when
complete. Bad input raises `errors.GenerateError` (the CLI prints it as one `error:` line).
"""

from collections.abc import Iterator
import dataclasses
import time
from typing import Any

from etils import epath
import numpy as np

from nwt_jax import errors
from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.data import video_io
from nwt_jax.inference import controls
from nwt_jax.inference import sampling
from nwt_jax.inference.generator import DECODE_CHUNK, Generator, Models, tile


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


def load_audio(path: str) -> np.ndarray:
  """Any audio ffmpeg reads -> float32 mono at 24 kHz, at least one video frame long."""
  try:
    with video_io.local_copy(path) as local:  # gs:// too
      audio = video_io.read_audio(local, sample_rate=constants.SAMPLE_RATE)
  except (video_io.VideoIOError, OSError) as e:
    raise errors.GenerateError(f"cannot read audio: {e}") from None
  if len(audio) < constants.SAMPLES_PER_FRAME:
    raise errors.GenerateError(
        f"{path}: {len(audio) / constants.SAMPLE_RATE * 1000:.1f} ms of audio is shorter than "
        f"one video frame ({1000 / constants.FPS:.1f} ms)")
  return audio


def generate(models: Models, request: Request, *, progress: bool = False) -> dict[str, Any]:
  """Runs one request end to end and writes `request.output`; returns what it measured."""
  directory = epath.Path(request.output).parent  # (gs:// has no directories to check)
  if not video_io.is_remote(request.output) and not directory.is_dir():
    raise errors.GenerateError(f"--output {request.output}: directory {directory} does not exist")
  models.check_compatible()
  start = time.perf_counter()
  audio = load_audio(request.audio)
  mel, num_frames = audio_lib.frame_features(audio)
  num_episodes = models.prior.num_episodes
  if request.episode_schedule:
    episodes = controls.parse_schedule(request.episode_schedule, num_frames, num_episodes)
  else:
    controls.check_episode(request.episode, num_episodes)
    episodes = np.full(num_frames, request.episode, np.int32)
  z = controls.style_latent(models, request.style, request.seed)[None]  # [1, style_dim]
  if request.traverse_dim >= 0:
    z = controls.traversal_latents(z[0], request.traverse_dim)  # [5, style_dim]
  generator = Generator(models, request.options, batch=z.shape[0], opening=request.opening)
  chunks = generator.stream(mel, episodes, z, request.seed, progress=progress)
  # Frames go to the encoder as they are rendered, so memory stays flat with length.
  frames = (tile(f) for f in render_in_chunks(generator, chunks, episodes))
  video_io.write_video(request.output, frames, fps=constants.FPS,
                       audio=audio[:num_frames * constants.SAMPLES_PER_FRAME],
                       sample_rate=constants.SAMPLE_RATE)
  seconds = time.perf_counter() - start
  audio_seconds = num_frames / constants.FPS
  return {"output": request.output, "frames": num_frames, "audio_seconds": audio_seconds,
          "wall_seconds": seconds, "rtf": seconds / audio_seconds, "streams": int(z.shape[0]),
          "episodes": episodes, "z": z}


def render_in_chunks(generator: Generator, chunks: Iterator[tuple[int, np.ndarray]],
                     episodes: np.ndarray) -> Iterator[np.ndarray]:
  """Renders the codes of `Generator.stream` (first frame, codes [B, n, ...]) as frames
  [B, m, H, W, 3] in whole decoder calls of DECODE_CHUNK frames (and one last partial call): a
  window adds only a few frames, and rendering each window's alone would pad most of a call."""
  pending, first = None, 0  # codes [B, k, ...] not yet rendered, starting at frame `first`
  for start, codes in chunks:
    if pending is None:
      pending, first = codes, start
    else:
      pending = np.concatenate([pending, codes], axis=1)
    ready = pending.shape[1] // DECODE_CHUNK * DECODE_CHUNK
    if ready:
      yield generator.frames(pending[:, :ready], episodes[first:first + ready])
      pending, first = pending[:, ready:], first + ready
  if pending is not None and pending.shape[1]:
    yield generator.frames(pending, episodes[first:first + pending.shape[1]])
