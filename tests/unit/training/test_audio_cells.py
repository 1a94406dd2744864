"""training/audio_cells.py: the cells a prior hides are the ones whose codes follow the audio."""

import numpy as np
import pytest

from nwt_jax.training import audio_cells


def _clips(seed=0, clips=24, frames=32, grid=(4, 5), heads=2, num_codes=16):
  """Random codes, except at cells (1, 2) and (2, 2), whose head-0 code is the frame's loudness
  bucket (and (2, 2) only every other frame: a weaker follower)."""
  rng = np.random.default_rng(seed)
  loud = rng.uniform(0.0, 1.0, (clips, frames))
  mels = np.repeat(np.repeat(np.log(loud + 1e-3), 4, axis=1)[:, :, None], 8, axis=2)
  codes = rng.integers(0, num_codes, (clips, frames) + grid + (heads,))
  bucket = np.minimum((loud * 8).astype(int), 7)
  codes[:, :, 1, 2, 0] = bucket
  codes[:, ::2, 2, 2, 0] = bucket[:, ::2]
  return codes, mels, num_codes


def test_the_cells_whose_codes_follow_the_loudness_and_only_those():
  codes, mels, num_codes = _clips()
  assert audio_cells.from_clips(codes, mels, num_codes, share=0.9) == (1 * 5 + 2,)
  assert audio_cells.from_clips(codes, mels, num_codes, share=0.1) == (1 * 5 + 2, 2 * 5 + 2)


def test_mel_loudness_pools_each_frames_four_rows():
  mel = np.log(np.array([[1.0, 1.0]] * 4 + [[4.0, 4.0]] * 4))  # two frames
  np.testing.assert_allclose(audio_cells.mel_loudness(mel, 2), np.log([2.0, 8.0]))


def test_a_share_outside_0_1_is_refused():
  codes, mels, num_codes = _clips(clips=2)
  with pytest.raises(ValueError, match="hide_audio_cells"):
    audio_cells.from_clips(codes, mels, num_codes, share=1.5)


def test_a_margin_grows_the_cells_by_that_many_cells_every_way_within_the_grid():
  cells = np.zeros((5, 4), bool)
  cells[0, 1] = True
  grown = audio_cells.dilate(cells, 1)
  want = np.zeros((5, 4), bool)
  want[0:2, 0:3] = True
  np.testing.assert_array_equal(grown, want)
  assert audio_cells.dilate(cells, 2).sum() == 3 * 4
  codes, mels, num_codes = _clips()
  assert audio_cells.from_clips(codes, mels, num_codes, share=0.9, margin=1) == tuple(
      r * 5 + c for r in range(0, 3) for c in range(1, 4))
