"""Frame integrity: the PSNR of a frame against the clean face drawn from its reading."""

import numpy as np
import pytest

from nwt_jax.data import synthetic
from nwt_jax.evaluation import metrics


def _readings_of(clip):
  readings = {key: clip["truth"][:, i] for i, key in enumerate(synthetic.TRUTH_KEYS)}
  readings["episode"] = np.full(len(clip["truth"]), clip["episode"])
  return readings


def test_a_clean_face_scores_far_above_one_with_a_stray_patch():
  clip = synthetic.make_clip(3, num_frames=8)
  readings = _readings_of(clip)
  clean = metrics.integrity_psnr(clip["video"], readings)
  assert np.all(np.isinf(clean))  # the truth redraws the frame exactly
  patched = clip["video"].copy()
  patched[4:, 10:18, 12:20] = synthetic.render_frames(clip["truth"][:1], clip["episode"])[
      0, 40:48, 24:32]  # a piece of the mouth pasted onto the forehead, from frame 4 on
  scores = metrics.integrity_psnr(patched, readings)
  assert np.all(np.isinf(scores[:4])) and np.all(scores[4:] < 30)


def test_readings_out_of_range_are_clipped_before_drawing():
  clip = synthetic.make_clip(5, num_frames=4)
  readings = _readings_of(clip)
  wild = dict(readings, mouth_open=readings["mouth_open"] + 5.0)  # far above the range's 1.0
  opened = clip["truth"].copy()
  opened[:, 0] = 1.0
  drawn = synthetic.render_frames(opened, clip["episode"])
  np.testing.assert_array_equal(metrics.integrity_psnr(drawn, wild), np.inf)


def test_frame_psnr_and_per_second():
  a = np.zeros((2, 4, 4, 3), np.uint8)
  b = a.copy()
  b[1] = 255
  np.testing.assert_allclose(metrics.frame_psnr(a, b), [np.inf, 0.0])
  with pytest.raises(ValueError):
    metrics.frame_psnr(a, b[:, :2])
  assert metrics.per_second(np.arange(70.0), fps=30) == [14.5, 44.5, 64.5]
  assert metrics.per_second(np.stack([np.zeros(60), np.ones(60)]), fps=30) == [0.5, 0.5]
