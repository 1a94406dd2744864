"""Read and write video and audio with the ffmpeg binary that imageio-ffmpeg ships.

Any container ffmpeg reads goes in; frames come out as uint8 RGB resampled to a target frame rate,
centre-cropped to the target aspect and resized; audio comes out as float32 mono at a target sample
rate. `write_video` encodes H.264 (yuv420p) mp4 with the audio muxed as AAC, through a temporary
file in the destination directory that is renamed only on success (no partial output).

Audio: ffmpeg downmixes (its layout-aware matrix, normalised so no channel sum can clip; for stereo
that is exactly the mean of the two channels) and resamples with libsoxr at 20-bit precision — the
same library and quality as `librosa.resample`'s default `soxr_hq`. Measured on a 60 s 44.1 kHz
stereo AAC file: the two agree to 2e-7 relative RMS (pinned by `tests/unit/data/test_video_io.py`); doing it
inside ffmpeg avoids a second pass over native-rate audio, a librosa import (1 s on first use) and
parsing channel layouts out of ffmpeg's log. (`librosa.load` cannot read audio inside mp4 at all.)

ffmpeg reads and writes local files: `local_copy` stages a remote (`gs://`, any `etils.epath`)
input, and `write_video` to a remote path encodes locally and uploads the finished file.

Every failure raises `VideoIOError`, whose message names the file.
"""

import contextlib
import dataclasses
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterable, Iterator

from etils import epath
import numpy as np

from nwt_jax.data import constants

DEFAULT_FPS = constants.FPS
DEFAULT_SAMPLE_RATE = constants.SAMPLE_RATE
_SOXR = "resampler=soxr:precision=20"  # == librosa.resample(res_type="soxr_hq")


class VideoIOError(Exception):
  """A media file could not be read or written; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What `probe` learns from a media file's header."""
  path: str
  duration: float  # seconds; 0.0 when the container does not say
  has_video: bool
  has_audio: bool
  fps: float  # of the first video stream; 0.0 without one
  height: int  # displayed size (after rotation metadata); 0 without video
  width: int
  sample_rate: int  # of the first audio stream; 0 without one


def ffmpeg_exe() -> str:
  # Loaded on use: GPU machines (and the benchmarks, which import this module through the
  # generator's controls) lack imageio-ffmpeg.
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def is_remote(path) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local file ffmpeg can open."""
  return "://" in os.fspath(path)


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
  """`path` itself if it is local, else a temporary local copy of it (removed on exit)."""
  path = os.fspath(path)
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory() as scratch:
    local = os.path.join(scratch, os.path.basename(path))
    try:
      epath.Path(path).copy(local)
    except (OSError, ValueError) as e:
      raise VideoIOError(f"{path}: cannot fetch it ({e})") from None
    yield local


def _check_readable(path: str) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoIOError(f"{path}: no such file")
  if not os.access(path, os.R_OK):
    raise VideoIOError(f"{path}: permission denied")
  return path


def _last_lines(stderr: bytes, n: int = 3) -> str:
  lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
  return " | ".join(lines[-n:]) or "no error message"


def probe(path: str) -> MediaInfo:
  """Reads a media file's header: duration, streams, frame rate, size, sample rate."""
  path = _check_readable(path)
  # `ffmpeg -i` with no output prints the header and exits 1; the header is the answer.
  proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                        capture_output=True, check=False)
  log = proc.stderr.decode("utf-8", "replace")
  if "Input #0" not in log:
    raise VideoIOError(f"{path}: not a readable media file ({_last_lines(proc.stderr)})")
  duration = 0.0
  if m := re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", log):
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
  video = [ln for ln in log.splitlines()
           if re.search(r"Stream #\d+:\d+.*: Video: ", ln) and "attached pic" not in ln]
  audio = [ln for ln in log.splitlines() if re.search(r"Stream #\d+:\d+.*: Audio: ", ln)]
  fps, height, width, sample_rate = 0.0, 0, 0, 0
  if video:
    if m := re.search(r", (\d+)x(\d+)", video[0]):
      width, height = int(m[1]), int(m[2])
    if m := re.search(r"([\d.]+)(k?) (?:fps|tbr)", video[0]):
      fps = float(m[1]) * (1000 if m[2] else 1)
    if m := re.search(r"rotation of (-?[\d.]+) degrees", log):
      if round(float(m[1])) % 180:
        width, height = height, width
  if audio and (m := re.search(r"(\d+) Hz", audio[0])):
    sample_rate = int(m[1])
  return MediaInfo(path=path, duration=duration, has_video=bool(video), has_audio=bool(audio),
                   fps=fps, height=height, width=width, sample_rate=sample_rate)


def _video_filter(fps: float, height: int, width: int) -> str:
  aspect = width / height
  # Centre-crop (in display pixels, so non-square pixels are handled) to the target aspect, then
  # resize; `start_time=0` aligns frame t with audio time t / fps from the file's start.
  return (f"fps=fps={fps}:start_time=0,"
          f"crop=w='min(iw,ih*{aspect}/sar)':h='min(ih,iw*sar/{aspect})',"
          f"scale={width}:{height},setsar=1")


def iter_video(path: str, *, fps: float = DEFAULT_FPS, height: int, width: int,
               chunk_frames: int = 32) -> Iterator[np.ndarray]:
  """Streams frames as uint8 [<=chunk_frames, height, width, 3] chunks (only the last is short).

  Memory stays at one chunk whatever the file's length.
  """
  if height <= 0 or width <= 0 or fps <= 0 or chunk_frames <= 0:
    raise ValueError(f"need positive fps, height, width, chunk_frames; got "
                     f"{fps}, {height}, {width}, {chunk_frames}")
  info = probe(path)
  if not info.has_video:
    raise VideoIOError(f"{info.path}: no video stream")
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", info.path,
         "-map", "0:v:0", "-an", "-sn", "-vf", _video_filter(fps, height, width),
         "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
  yield from stream_frames(cmd, height, width, chunk_frames=chunk_frames, source=info.path)


def stream_frames(cmd: list[str], height: int, width: int, *, chunk_frames: int, source: str,
                  skip_frames: int = 0, empty_is_error: bool = True) -> Iterator[np.ndarray]:
  """Runs ffmpeg `cmd`, which writes rgb24 rawvideo frames of height x width to stdout, and
  yields them as uint8 [<=chunk_frames, height, width, 3] chunks after dropping the first
  `skip_frames`. A failed decode (not a caller that stops early) raises VideoIOError naming
  `source`, as does a stream with no frames when `empty_is_error`."""
  frame_bytes = height * width * 3
  with tempfile.TemporaryFile() as err, subprocess.Popen(
      cmd, stdout=subprocess.PIPE, stderr=err) as proc:
    num_frames, stopped_early = 0, False
    try:
      skipped = len(proc.stdout.read(skip_frames * frame_bytes)) if skip_frames else 0
      while skipped == skip_frames * frame_bytes:
        data = proc.stdout.read(chunk_frames * frame_bytes)
        count = len(data) // frame_bytes
        if count:
          num_frames += count
          yield np.frombuffer(data[:count * frame_bytes], np.uint8).reshape(
              count, height, width, 3)
        if count < chunk_frames:
          break
    finally:
      proc.stdout.close()
      if proc.poll() is None:  # the caller stopped early
        stopped_early = True
        proc.kill()
      returncode = proc.wait()
    if returncode != 0 and not stopped_early:
      err.seek(0)
      raise VideoIOError(f"{source}: video decoding failed after {num_frames} frames "
                         f"({_last_lines(err.read())})")
    if empty_is_error and num_frames == 0 and returncode == 0:
      raise VideoIOError(f"{source}: no video frames could be decoded")


def read_video(path: str, *, fps: float = DEFAULT_FPS, height: int, width: int) -> np.ndarray:
  """All frames of `path` as uint8 [T, height, width, 3] at `fps`, centre-cropped and resized."""
  return np.concatenate(list(iter_video(path, fps=fps, height=height, width=width,
                                        chunk_frames=256)))


def read_audio(path: str, *, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
  """The first audio stream of `path` as float32 mono [N] at `sample_rate`, time 0 at file start."""
  info = probe(path)
  if not info.has_audio:
    raise VideoIOError(f"{info.path}: no audio stream")
  cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", info.path,
         "-map", "0:a:0", "-vn", "-sn", "-ac", "1",
         "-af", f"aresample={sample_rate}:{_SOXR}:rematrix_maxval=1:first_pts=0",
         "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
  proc = subprocess.run(cmd, capture_output=True, check=False)
  if proc.returncode != 0:
    raise VideoIOError(f"{info.path}: audio decoding failed ({_last_lines(proc.stderr)})")
  if not proc.stdout:
    raise VideoIOError(f"{info.path}: the audio stream holds no samples")
  return np.frombuffer(proc.stdout, np.float32).copy()


def _to_float_audio(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f"audio must be mono [num_samples], got shape {audio.shape}")
  if audio.dtype == np.int16:
    return audio.astype(np.float32) / 32768.0
  if not np.issubdtype(audio.dtype, np.floating):
    raise ValueError(f"audio must be int16 or float in [-1, 1], got {audio.dtype}")
  return audio.astype(np.float32)


def _check_frames(path: str, frames: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
  frames = np.asarray(frames)
  if (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames)
      or (shape is not None and frames.shape[1:] != shape)):
    raise ValueError(f"{path}: frames must be uint8 [T>0, H, W, 3]"
                     f"{'' if shape is None else f' with H, W = {shape[:2]}'}, got "
                     f"{frames.dtype} {frames.shape}")
  return frames


def write_video(path: str, frames: np.ndarray | Iterable[np.ndarray], *, fps: float,
                audio: np.ndarray | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE,
                crf: int = 18) -> None:
  """Writes uint8 [T, H, W, 3] frames as H.264 (yuv420p) mp4, with mono `audio` muxed as AAC.

  `frames` is one array or an iterable of [n, H, W, 3] chunks, piped to ffmpeg as they come (so
  a long video never sits in memory whole). `audio` is int16 or float in [-1, 1] at
  `sample_rate`. Odd frame sizes are padded by one black row/column (yuv420p needs even sizes).
  The file appears only when complete: ffmpeg writes a temporary file next to `path`, renamed on
  success and removed on failure (also when the iterable raises).
  """
  path = os.fspath(path)
  if is_remote(path):  # encode locally, then upload the complete file (none on failure)
    with tempfile.TemporaryDirectory() as scratch:
      local = os.path.join(scratch, os.path.basename(path))
      write_video(local, frames, fps=fps, audio=audio, sample_rate=sample_rate, crf=crf)
      epath.Path(local).copy(path, overwrite=True)
    return
  chunks = iter([frames] if isinstance(frames, np.ndarray) else frames)
  if fps <= 0:
    raise ValueError(f"{path}: fps must be positive, got {fps}")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise VideoIOError(f"{path}: directory {directory} does not exist")
  first = _check_frames(path, next(chunks, np.zeros((0,), np.uint8)), None)
  _, height, width, _ = first.shape
  with tempfile.TemporaryDirectory() as scratch:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
           "-i", "pipe:0"]
    if audio is not None:
      audio_path = os.path.join(scratch, "audio.f32")
      _to_float_audio(audio).tofile(audio_path)
      cmd += ["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", audio_path,
              "-c:a", "aac", "-b:a", "128k"]
    cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-crf", str(crf),
            "-preset", "medium", "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"]
    # ffmpeg creates the temporary file itself, so it gets the user's normal permissions.
    tmp_name = f".{os.path.basename(path)}.{secrets.token_hex(4)}.partial"
    tmp_path = os.path.join(directory, tmp_name)
    with open(os.path.join(scratch, "stderr"), "w+b") as stderr:
      proc = subprocess.Popen(cmd + [tmp_path], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=stderr)
      try:
        try:
          proc.stdin.write(first.tobytes())
          for chunk in chunks:
            proc.stdin.write(_check_frames(path, chunk, first.shape[1:]).tobytes())
          proc.stdin.close()
        except BrokenPipeError:
          pass  # ffmpeg stopped early; its exit code and stderr say why
        if proc.wait() != 0:
          stderr.seek(0)
          raise VideoIOError(f"{path}: encoding failed ({_last_lines(stderr.read())})")
        os.replace(tmp_path, path)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
        if os.path.exists(tmp_path):
          os.remove(tmp_path)
