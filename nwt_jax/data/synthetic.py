"""The synthetic world: a procedural talking head whose ground truth is known.

Everything is a deterministic function of a seed and uses numpy only. The world is built so that
the whole NWT pipeline is learnable and *measurable* on a CPU:

- Speech: syllables of vowels with distinct formants (F1, F2), a per-episode pitch, consonant-like
  noise onsets, an amplitude envelope and silent pauses (source-filter synthesis, done spectrally:
  each harmonic of the glottal pulse train is weighted by the vocal-tract filter's response).
- Face: the mouth opening follows loudness × F1 (the jaw) and its width follows F2 (spread vs
  rounded lips), so lip shape is predictable from audio alone; blinks are random and are not.
- Episode (labelled): background, shirt colour, hair style and colour, voice pitch.
- Style (unlabelled, per clip): camera offset x/y, zoom, head tilt, plus a slow head sway.

`render_frames` is a pure function of the per-frame truth, which the evaluation probe and the tests
rely on: any truth vector can be drawn, so the probe learns to read truth back from frames.
"""

import dataclasses

import numpy as np

from nwt_jax.data.constants import FPS  # the clips' frame rate
from nwt_jax.data.constants import SAMPLE_RATE  # the clips' audio rate
from nwt_jax.data.constants import SAMPLES_PER_FRAME

NUM_EPISODES = 8
TRUTH_KEYS = ("mouth_open", "mouth_width", "cam_x", "cam_y", "zoom", "tilt", "blink")
STYLE_KEYS = ("cam_x", "cam_y", "zoom", "tilt")  # per-clip style; truth's tilt adds head sway
# Value range of each truth key (TRUTH_KEYS order): targets are scaled to [-1, 1] by it, and
# random truth is drawn uniformly from it. Tilt's range includes the head sway around the style.
TRUTH_RANGES = np.array([
    (0.0, 1.0),  # mouth_open
    (0.0, 1.0),  # mouth_width
    (-1.0, 1.0),  # cam_x
    (-1.0, 1.0),  # cam_y
    (-1.0, 1.0),  # zoom
    (-1.2, 1.2),  # tilt
    (0.0, 1.0),  # blink
], np.float32)

# Vowels as (F1, F2) in Hz: F1 rises as the jaw opens, F2 as the lips spread.
VOWELS = np.array([
    (730, 1090),  # a: open
    (660, 1720),  # ae: open, spread
    (530, 1840),  # e: mid, spread
    (270, 2290),  # i: closed, spread
    (570, 840),  # o: mid, rounded
    (300, 870),  # u: closed, rounded
    (490, 1350),  # schwa: neutral
], np.float64)
F1_RANGE = (250.0, 750.0)
F2_RANGE = (800.0, 2300.0)
F3 = 2600.0
NEUTRAL_F1, NEUTRAL_F2 = 400.0, 1450.0  # the vocal tract at rest (pauses)


@dataclasses.dataclass(frozen=True)
class Episode:
  """What is constant within an episode (the labelled condition)."""
  background: tuple[float, float, float]  # RGB in [0, 1]
  background_pattern: int  # 0 flat, 1 vertical gradient, 2 soft horizontal bands, 3 diagonal
  shirt: tuple[float, float, float]
  hair: tuple[float, float, float]
  hair_style: int  # 0 short cap, 1 tall, 2 long sides, 3 bald
  pitch_hz: float  # mean voice pitch


EPISODES = (
    Episode((0.62, 0.75, 0.90), 1, (0.80, 0.20, 0.20), (0.15, 0.10, 0.07), 0, 110.0),
    Episode((0.93, 0.85, 0.62), 0, (0.20, 0.35, 0.75), (0.85, 0.70, 0.35), 2, 210.0),
    Episode((0.55, 0.80, 0.58), 2, (0.95, 0.85, 0.30), (0.45, 0.25, 0.10), 1, 140.0),
    Episode((0.80, 0.65, 0.85), 3, (0.25, 0.60, 0.35), (0.10, 0.10, 0.10), 3, 95.0),
    Episode((0.35, 0.40, 0.55), 0, (0.95, 0.95, 0.92), (0.60, 0.20, 0.08), 2, 180.0),
    Episode((0.95, 0.72, 0.60), 2, (0.30, 0.30, 0.35), (0.25, 0.15, 0.10), 1, 125.0),
    Episode((0.70, 0.90, 0.92), 3, (0.55, 0.25, 0.60), (0.80, 0.75, 0.70), 0, 230.0),
    Episode((0.45, 0.30, 0.30), 1, (0.90, 0.55, 0.20), (0.05, 0.05, 0.05), 3, 160.0),
)
SKIN = np.array([0.93, 0.76, 0.62])
EYE = np.array([0.12, 0.10, 0.12])
MOUTH = np.array([0.45, 0.08, 0.12])


# ----------------------------------------------------------------------------------------------
# Speech


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
  """Moving average with edge padding (keeps length)."""
  kernel = np.ones(width) / width
  return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), kernel, "valid")


def _syllable_timeline(rng: np.random.Generator, num_samples: int):
  """Per-sample amplitude envelope, F1, F2 and a consonant-noise envelope for a run of speech."""
  envelope = np.zeros(num_samples)
  f1 = np.full(num_samples, NEUTRAL_F1)
  f2 = np.full(num_samples, NEUTRAL_F2)
  noise = np.zeros(num_samples)
  start = -int(rng.uniform(0.0, 0.3) * SAMPLE_RATE)  # a clip starts mid-utterance
  while start < num_samples:
    if rng.random() < 0.25:  # a pause
      start += int(rng.uniform(0.08, 0.4) * SAMPLE_RATE)
      continue
    length = int(rng.uniform(0.12, 0.32) * SAMPLE_RATE)
    onset = int(rng.uniform(0.0, 0.04) * SAMPLE_RATE) if rng.random() < 0.6 else 0
    lo, hi = max(start, 0), min(start + length, num_samples)
    if hi > lo:
      t = (np.arange(lo, hi) - start) / length  # 0..1 through the syllable
      attack, release = 0.12, 0.25
      shape = np.clip(np.minimum(t / attack, (1 - t) / release), 0, 1)
      envelope[lo:hi] = rng.uniform(0.45, 1.0) * shape
      f1[lo:hi], f2[lo:hi] = VOWELS[rng.integers(len(VOWELS))] * rng.uniform(0.93, 1.07, 2)
      n_lo, n_hi = max(start - onset, 0), min(start, num_samples)
      if n_hi > n_lo:
        noise[n_lo:n_hi] = rng.uniform(0.1, 0.3)
    start += length + int(rng.uniform(0.0, 0.06) * SAMPLE_RATE)
  # Articulators move in ~20-30 ms, not instantly.
  return _smooth(envelope, 240), _smooth(f1, 600), _smooth(f2, 600), _smooth(noise, 96)


def _resonator_gain(freq: np.ndarray, formant: np.ndarray, bandwidth: float) -> np.ndarray:
  """|H(f)| of a second-order resonator at `formant` Hz (unit gain at DC)."""
  ratio = freq / formant
  return 1.0 / np.sqrt((1 - ratio ** 2) ** 2 + (ratio * bandwidth / formant) ** 2)


def synthesize_speech(rng: np.random.Generator, num_samples: int, pitch_hz: float):
  """Source-filter speech. Returns (audio float32 in [-1, 1], envelope, f1, f2), all per sample."""
  envelope, f1, f2, noise_env = _syllable_timeline(rng, num_samples)
  t = np.arange(num_samples) / SAMPLE_RATE
  # Intonation: slow pitch movement around the speaker's mean pitch.
  f0 = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3)))
  phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
  num_harmonics = int(4000 // pitch_hz)
  k = np.arange(1, num_harmonics + 1)[:, None]
  # The filter is evaluated at a 600 Hz control rate, then held per sample (inaudible steps).
  ctl = slice(None, None, 40)
  freq = k * f0[ctl]
  gain = (_resonator_gain(freq, f1[ctl], 90.0) * _resonator_gain(freq, f2[ctl], 110.0)
          * _resonator_gain(freq, F3, 160.0) / k)  # 1/k: glottal roll-off + lip radiation
  gain = np.repeat(gain, 40, axis=1)[:, :num_samples]
  voiced = (gain * np.sin(k * phase)).sum(axis=0) * envelope
  hiss = np.diff(rng.standard_normal(num_samples + 1)) * noise_env  # high-passed noise
  floor = 1e-4 * rng.standard_normal(num_samples)  # room noise, so silence is not digital zero
  audio = np.tanh(0.05 * voiced + 0.25 * hiss + floor)
  return audio.astype(np.float32), envelope, f1, f2


def speech_truth(envelope: np.ndarray, f1: np.ndarray, f2: np.ndarray, num_frames: int):
  """Per-frame mouth_open (loudness × jaw from F1) and mouth_width (from F2), both in [0, 1]."""
  per_frame = lambda x: x[: num_frames * SAMPLES_PER_FRAME].reshape(num_frames, -1).mean(axis=1)
  loudness = per_frame(envelope)
  jaw = np.clip((per_frame(f1) - F1_RANGE[0]) / (F1_RANGE[1] - F1_RANGE[0]), 0, 1)
  spread = np.clip((per_frame(f2) - F2_RANGE[0]) / (F2_RANGE[1] - F2_RANGE[0]), 0, 1)
  return np.clip(loudness * (0.35 + 0.65 * jaw), 0, 1), spread


def make_speech(seed: int, num_samples: int, episode: int = 0):
  """Speech of any length for an episode's voice: (audio float32 [N], truth dict of per-frame
  mouth_open and mouth_width for the N // 800 whole frames). For long demo/test audio."""
  rng = np.random.default_rng(seed)
  audio, envelope, f1, f2 = synthesize_speech(rng, num_samples, EPISODES[episode].pitch_hz)
  mouth_open, mouth_width = speech_truth(envelope, f1, f2, num_samples // SAMPLES_PER_FRAME)
  return audio, {"mouth_open": mouth_open, "mouth_width": mouth_width}


# ----------------------------------------------------------------------------------------------
# Pictures


def _blinks(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """Eyelid closure per frame in [0, 1]: random blinks (~0.4/s) of 5 frames, from the rng alone."""
  blink = np.zeros(num_frames)
  pos = -int(rng.integers(0, 30))
  while True:
    pos += int(rng.exponential(FPS / 0.4)) + 3
    if pos >= num_frames + 3:
      return blink
    for offset, closure in zip(range(-2, 3), (0.35, 0.85, 1.0, 0.85, 0.35)):
      if 0 <= pos + offset < num_frames:
        blink[pos + offset] = max(blink[pos + offset], closure)


def _ellipse_alpha(u, v, cu, cv, ru, rv, px):
  """Anti-aliased coverage of an ellipse; `px` is the size of one pixel in these units."""
  du, dv = (u - cu) / ru, (v - cv) / rv
  r = np.sqrt(du ** 2 + dv ** 2) + 1e-9
  grad = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2) / r  # |∇r|: turns (r - 1) into a distance
  return np.clip(0.5 - (r - 1) / (grad * px + 1e-9), 0.0, 1.0)


def _box_alpha(dist, px):
  """Coverage from a signed distance (negative inside)."""
  return np.clip(0.5 - dist / px, 0.0, 1.0)


def _over(canvas, alpha, color):
  """Paint `color` over `canvas` [T, H, W, 3] with coverage `alpha` [T, H, W]."""
  alpha = alpha[..., None]
  return canvas * (1 - alpha) + np.asarray(color) * alpha


def render_frames(truth: np.ndarray, episode, height: int = 64, width: int = 56) -> np.ndarray:
  """Draws the face for per-frame truth [T, 7] (TRUTH_KEYS order) -> uint8 [T, height, width, 3].

  `episode` is an int or an int array [T] (episodes may switch mid-video). Geometry is in units of
  the image height, so any resolution draws the same picture.
  """
  truth = np.asarray(truth, np.float64)
  num_frames = truth.shape[0]
  episodes = np.broadcast_to(np.asarray(episode, np.int64), (num_frames,))
  if episodes.min() < 0 or episodes.max() >= len(EPISODES):
    raise ValueError(f"episode ids must be in [0, {len(EPISODES)}), got {np.unique(episodes)}")
  col = lambda i: truth[:, TRUTH_KEYS.index(i), None, None]
  mouth_open, mouth_width, blink = col("mouth_open"), col("mouth_width"), col("blink")
  scale = np.exp(0.2 * col("zoom"))
  angle = 0.25 * col("tilt")
  cx, cy = 0.12 * col("cam_x"), 0.02 + 0.07 * col("cam_y")

  px = 1.0 / height
  y = (np.arange(height) + 0.5)[None, :, None] * px - 0.5
  x = (np.arange(width) + 0.5)[None, None, :] * px - 0.5 * width / height
  bx, by = (x - cx) / scale, (y - cy) / scale  # body frame: follows the camera, not the tilt
  cos, sin = np.cos(angle), np.sin(angle)
  pivot = 0.2  # the head tilts about the neck
  u = cos * bx + sin * (by - pivot)
  v = -sin * bx + cos * (by - pivot) + pivot
  fpx = px / scale  # a pixel in face units

  ep = [EPISODES[e] for e in episodes]
  per_frame = lambda f: np.array([f(e) for e in ep])[:, None, None, :]
  canvas = np.broadcast_to(per_frame(lambda e: e.background), (num_frames, height, width, 3))
  pattern = np.array([e.background_pattern for e in ep])[:, None, None]
  shade = np.select(
      [pattern == 1, pattern == 2, pattern == 3],
      [0.25 * (y + 0.5), 0.08 * np.cos(2 * np.pi * 2 * y), 0.12 * (x + y)],
      0.0 * x)
  canvas = np.clip(canvas * (1 - shade[..., None]), 0, 1)

  # Shirt: shoulders widening below the neck.
  shirt_dist = np.maximum(0.33 - by, np.abs(bx) - (0.17 + 0.9 * np.maximum(by - 0.33, 0)))
  canvas = _over(canvas, _box_alpha(shirt_dist, fpx), per_frame(lambda e: e.shirt))
  neck = _box_alpha(np.maximum(np.abs(bx) - 0.07, np.maximum(0.15 - by, by - 0.36)), fpx)
  canvas = _over(canvas, neck, SKIN * 0.9)

  style = np.array([e.hair_style for e in ep])[:, None, None]
  hair_color = per_frame(lambda e: e.hair)
  tall = _ellipse_alpha(u, v, 0, -0.2, 0.2, 0.16, fpx)
  sides = _box_alpha(np.maximum(np.abs(np.abs(u) - 0.19) - 0.05, np.abs(v - 0.04) - 0.2), fpx)
  back_hair = np.where(style == 1, tall, 0) + np.where(style == 2, sides, 0)
  canvas = _over(canvas, np.clip(back_hair, 0, 1), hair_color)
  canvas = _over(canvas, _ellipse_alpha(u, v, 0, 0, 0.18, 0.24, fpx), SKIN)
  cap = _ellipse_alpha(u, v, 0, -0.12, 0.19, 0.14, fpx) * _box_alpha(v + 0.1, fpx)
  canvas = _over(canvas, np.where((style == 0) | (style == 2), cap, 0), hair_color)

  eye_height = 0.028 * (1 - blink) + 0.004
  for side in (-1, 1):
    canvas = _over(canvas, _ellipse_alpha(u, v, side * 0.075, -0.04, 0.035, eye_height, fpx), EYE)
  mouth = _ellipse_alpha(u, v, 0, 0.13, 0.035 + 0.05 * mouth_width, 0.006 + 0.06 * mouth_open, fpx)
  canvas = _over(canvas, mouth, MOUTH)
  return np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Clips


def sample_style(rng: np.random.Generator) -> np.ndarray:
  """Per-clip style (STYLE_KEYS order), each in [-1, 1]."""
  return rng.uniform(-1, 1, len(STYLE_KEYS))


def make_clip(seed: int, *, num_frames: int = 32, height: int = 64, width: int = 56,
              episode: int | None = None, num_episodes: int = NUM_EPISODES) -> dict:
  """One clip of the synthetic world, a deterministic function of its arguments.

  Returns video uint8 [T, H, W, 3], audio int16 [T·800] at 24 kHz, truth float32 [T, 7]
  (TRUTH_KEYS order), episode int and style float32 [4] (STYLE_KEYS order).
  """
  if not 1 <= num_episodes <= len(EPISODES):
    raise ValueError(f"num_episodes must be in [1, {len(EPISODES)}], got {num_episodes}")
  rng = np.random.default_rng(seed)
  if episode is None:
    episode = int(rng.integers(num_episodes))
  elif not 0 <= episode < num_episodes:
    raise ValueError(f"episode must be in [0, {num_episodes}), got {episode}")
  style = sample_style(rng)
  audio, envelope, f1, f2 = synthesize_speech(
      rng, num_frames * SAMPLES_PER_FRAME, EPISODES[episode].pitch_hz)
  mouth_open, mouth_width = speech_truth(envelope, f1, f2, num_frames)
  seconds = np.arange(num_frames) / FPS
  sway = 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * seconds + rng.uniform(0, 2 * np.pi))
  truth = np.stack([
      mouth_open, mouth_width,
      np.full(num_frames, style[0]), np.full(num_frames, style[1]), np.full(num_frames, style[2]),
      np.clip(style[3] + sway, -1.2, 1.2), _blinks(rng, num_frames)], axis=1).astype(np.float32)
  return {
      "video": render_frames(truth, episode, height, width),
      "audio": np.round(audio * 32767).astype(np.int16),
      "truth": truth,
      "episode": episode,
      "style": style.astype(np.float32),
  }


def mouth_region(truth: np.ndarray, episode, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Where the mouth can be, per frame: (bool [T, H, W], the frames drawn with it fully open).

  The region is where the frame drawn from `truth` with the mouth fully open differs from it
  drawn closed (the frame's own camera, zoom, tilt and mouth width), grown by one pixel for blur
  and the closed lips' line (the mouth never reaches the frame's edge).
  """
  drawn = {}
  for mouth_open in (0.0, 1.0):
    edited = np.array(truth, np.float32)
    edited[:, TRUTH_KEYS.index("mouth_open")] = mouth_open
    drawn[mouth_open] = render_frames(edited, episode, height, width)
  changed = np.any(drawn[0.0] != drawn[1.0], axis=-1)
  region = changed.copy()
  for axis in (1, 2):
    for shift in (-1, 1):
      region |= np.roll(changed, shift, axis=axis)
  return region, drawn[1.0]
