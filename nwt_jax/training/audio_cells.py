"""The grid cells whose codes follow the audio, found from tokenized clips alone (no truth).

A cell follows the audio as much as its code explains the within-clip loudness
(`code_stats.cell_eta2`, as the explorer scores it); the cells scoring at least `share` x the
best cell's become `prior.hidden_cells`, which the prior never sees in the previous frame or the
anchor, so it draws them from the audio in every frame (on the synthetic world, the mouth's
region; docs/experiments.md section 9).
"""

import numpy as np

from nwt_jax import errors
from nwt_jax.data import token_pipeline
from nwt_jax.data import code_stats

MAX_CLIPS = 512


def mel_loudness(mel: np.ndarray, num_frames: int) -> np.ndarray:
  """Log-mel [4T, bins] -> log energy per video frame [T] (each frame's mel rows pooled)."""
  mel = np.asarray(mel, np.float64)[:4 * num_frames]
  peak = mel.max()
  energy = np.exp(mel - peak).sum(axis=-1).reshape(num_frames, -1).mean(axis=-1)
  return np.log(np.maximum(energy, 1e-30)) + peak


def find(root: str, share: float, *, margin: int = 0, max_clips: int = MAX_CLIPS
         ) -> tuple[int, ...]:
  """Row-major indices of the audio-following cells of the train tokens in `root` (up to
  `max_clips` clips, evenly spaced, each cut to the shortest one's length)."""
  source = token_pipeline.TokenSource(root, "train")
  picked = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_clips)).astype(int))
  clips = [source.clip(int(i)) for i in picked]
  frames = min(len(c["codes"]) for c in clips)
  codes = np.stack([np.asarray(c["codes"][:frames]) for c in clips])
  mels = np.stack([np.asarray(c["mel"][:4 * frames]) for c in clips])
  return from_clips(codes, mels, int(token_pipeline.read_manifest(root)["num_codes"]), share,
                    margin=margin)


def dilate(cells: np.ndarray, margin: int) -> np.ndarray:
  """bool [gh, gw] grown by `margin` cells in every direction (diagonals included)."""
  out = cells.copy()
  for dy in range(-margin, margin + 1):
    for dx in range(-margin, margin + 1):
      shifted = np.roll(np.roll(cells, dy, axis=0), dx, axis=1)
      if dy > 0: shifted[:dy] = False
      if dy < 0: shifted[dy:] = False
      if dx > 0: shifted[:, :dx] = False
      if dx < 0: shifted[:, dx:] = False
      out |= shifted
  return out


def from_clips(codes: np.ndarray, mels: np.ndarray, num_codes: int, share: float, *,
               margin: int = 0) -> tuple[int, ...]:
  """codes [N, T, gh, gw, K], log-mels [N, 4T, bins] -> the audio-following cells' row-major
  indices (score >= share x the best cell's), grown by `margin` cells (the face moves: a
  mouth's cells differ from clip to clip)."""
  if not 0 < share <= 1:
    raise errors.InvalidInput(f"train.hide_audio_cells must be in (0, 1] (0: none), got {share}")
  loud = np.stack([mel_loudness(mel, codes.shape[1]) for mel in mels])
  cells = dilate(code_stats.audio_following(codes, loud, num_codes, share=share)["cells"], margin)
  return tuple(int(i) for i in np.flatnonzero(cells.reshape(-1)))
