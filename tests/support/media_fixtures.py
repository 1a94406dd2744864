"""Test media from ffmpeg's own sources: any frame rate, size, sample rate, channel count."""

import os
import subprocess

import numpy as np

from nwt_jax.data import video_io


def make_video(path, *, seconds: float, fps: float = 30, width: int = 32, height: int = 28,
               sample_rate: int | None = 24000, channels: int = 1, tone_hz: float = 440.0,
               codec: str = "libx264") -> str:
  """A moving test pattern (+ a sine tone unless sample_rate is None) in any container."""
  cmd = [video_io.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]
  if sample_rate:
    cmd += ["-f", "lavfi", "-i",
            f"sine=frequency={tone_hz}:sample_rate={sample_rate}:duration={seconds}",
            "-ac", str(channels)]
  cmd += ["-c:v", codec, "-pix_fmt", "yuv420p"]
  if sample_rate:
    cmd += ["-c:a", "libopus" if str(path).endswith(".webm") else "aac"]
  subprocess.run(cmd + [os.fspath(path)], check=True, capture_output=True)
  return os.fspath(path)


def make_audio_only(path, *, seconds: float, sample_rate: int = 24000) -> str:
  """An audio-only file (e.g. AAC in mp4) of a sine tone."""
  subprocess.run([video_io.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                  "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}",
                  "-c:a", "aac", os.fspath(path)], check=True, capture_output=True)
  return os.fspath(path)


def truncate(source, path, *, index_first: bool) -> str:
  """The first half of an mp4: unreadable when its index (moov) comes last, readable up to the
  cut when it comes first."""
  source = os.fspath(source)
  if index_first:
    moved = os.fspath(path) + ".faststart.mp4"
    subprocess.run([video_io.ffmpeg_exe(), "-loglevel", "error", "-y", "-i", source, "-c", "copy",
                    "-movflags", "+faststart", moved], check=True, capture_output=True)
    source = moved
  with open(source, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  if index_first:
    os.remove(source)
  return os.fspath(path)


def write_wav(path, audio: np.ndarray, sample_rate: int) -> str:
  """int16 PCM WAV from float audio [N] or [N, channels]."""
  import wave  # pylint: disable=g-import-not-at-top
  audio = np.asarray(audio, np.float64).reshape(len(audio), -1)
  with wave.open(os.fspath(path), "wb") as f:
    f.setnchannels(audio.shape[1])
    f.setsampwidth(2)
    f.setframerate(sample_rate)
    f.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
  return os.fspath(path)


def dominant_hz(audio: np.ndarray, sample_rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
  return float(np.fft.rfftfreq(len(audio), 1 / sample_rate)[np.argmax(spectrum)])
