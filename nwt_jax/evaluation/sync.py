"""Audio-visual sync without a probe: does the mouth move when the speech does?

For footage with no ground truth (a user's videos), the sync score is the correlation, pooled
over clips, between the speech's activity and the motion energy of the mouth region:

  speech activity  per video frame, |change| of the log RMS envelope of its 800 samples, smoothed
                   over SMOOTH frames (syllable onsets and offsets: the moments a mouth moves);
  motion energy    per frame, the mean absolute grey-level change of the mouth box since the
                   previous frame, smoothed the same way (the box: `nwt_jax.data.faces.mouth_box`
                   of the detected face, or `fallback_mouth_box` where no face is found).

`sync_score` returns r at offset 0, the offset (frames, video after audio when > 0) where r peaks,
and a shuffled-audio control: each clip's motion against another clip's speech (near 0 when the
video follows its own audio). Everything here is numpy.
"""

import numpy as np

from nwt_jax.data import constants
from nwt_jax.evaluation import metrics

SMOOTH = 3  # frames of the moving average applied to both signals (0.1 s)
EPS = 1e-4  # floor of the RMS envelope (full scale 1), ~ -80 dB: silence


def _smooth(x: np.ndarray, width: int = SMOOTH) -> np.ndarray:
  if width <= 1:
    return x
  kernel = np.ones(width) / width
  padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
  return np.convolve(padded, kernel, mode="valid")


def speech_envelope(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """Log RMS [T] of each video frame's 800 samples of 24 kHz audio (int16 or float in [-1, 1])."""
  audio = np.asarray(audio)
  audio = audio.astype(np.float64) / 32768.0 if audio.dtype == np.int16 else audio.astype(
      np.float64)
  per = constants.SAMPLES_PER_FRAME
  num_frames = len(audio) // per if num_frames is None else num_frames
  audio = np.pad(audio[:num_frames * per], (0, max(0, num_frames * per - len(audio))))
  rms = np.sqrt(np.mean(audio.reshape(num_frames, per) ** 2, axis=1))
  return np.log(np.maximum(rms, EPS))


def speech_activity(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """|change| of the log envelope per frame [T], smoothed (frame 0 repeats frame 1's)."""
  env = speech_envelope(audio, num_frames)
  change = np.abs(np.diff(env, prepend=env[:1]))
  if len(change) > 1:
    change[0] = change[1]
  return _smooth(change)


def motion_energy(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Mean |grey-level change| since the previous frame inside the box [T], smoothed.

  frames uint8 [T, H, W, 3]; boxes float [4] or [T, 4] as (x0, y0, x1, y1) in pixels (one box
  for the clip: the union of the per-frame boxes' extent is not taken, each frame uses its own).
  """
  frames = np.asarray(frames)
  grey = frames.astype(np.float32).mean(axis=-1)  # [T, H, W]
  num_frames, height, width = grey.shape
  boxes = np.broadcast_to(np.asarray(boxes, np.float64), (num_frames, 4))
  energy = np.zeros(num_frames)
  for t in range(1, num_frames):
    x0, y0, x1, y1 = _clip_box(boxes[t], height, width)
    energy[t] = np.abs(grey[t, y0:y1, x0:x1] - grey[t - 1, y0:y1, x0:x1]).mean()
  if num_frames > 1:
    energy[0] = energy[1]
  return _smooth(energy)


def _clip_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  x0, x1 = max(0, min(x0, width - 1)), max(1, min(x1, width))
  y0, y1 = max(0, min(y0, height - 1)), max(1, min(y1, height))
  return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def fallback_mouth_box(height: int, width: int) -> np.ndarray:
  """Where the mouth of a face-centred crop usually is: the middle half across, the band from
  60% to 90% of the height down. Used where no face is found."""
  return np.array([0.25 * width, 0.6 * height, 0.75 * width, 0.9 * height])


def sync_score(activities: list[np.ndarray], motions: list[np.ndarray], *,
               max_offset: int = 5) -> dict:
  """Pooled r between speech activity and mouth motion (lists of [T_i], one per clip).

  Returns {'r', 'best_offset', 'best_r', 'shuffled_r'}: shuffled_r pairs clip i's motion with
  clip (i + 1) mod n's speech (with one clip: its speech reversed in time)."""
  motions = [np.asarray(m, np.float64) for m in motions]
  activities = [np.asarray(a, np.float64) for a in activities]
  out = metrics.lipsync(motions, activities, max_offset=max_offset)
  if len(motions) >= 2:
    shuffled = metrics.shuffled_lipsync(motions, activities)
  else:
    shuffled = metrics.pearson(motions[0], activities[0][::-1])
  return {"r": out["r"], "best_offset": out["best_offset"], "best_r": out["best_r"],
          "shuffled_r": float(shuffled)}


def clip_sync(clips: list[dict], boxes: list[np.ndarray], *, max_offset: int = 5) -> dict:
  """`sync_score` of clips {'video' uint8 [T, H, W, 3], 'audio' [T·800]} with their mouth boxes
  ([4] or [T, 4] each)."""
  motions = [motion_energy(c["video"], b) for c, b in zip(clips, boxes)]
  activities = [speech_activity(c["audio"], len(c["video"])) for c in clips]
  return sync_score(activities, motions, max_offset=max_offset)
