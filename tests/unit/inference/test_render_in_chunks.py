"""job.render_in_chunks: every frame rendered once, in order, with its episode, in whole chunks."""

import numpy as np

from nwt_jax.inference import generator
from nwt_jax.inference import job


class _Recorder:
  """A Generator stand-in whose frames() returns [B, n, 1] arrays of (frame code, episode)."""

  def __init__(self):
    self.calls = []

  def frames(self, codes, episodes):
    self.calls.append(codes.shape[1])
    episodes = np.broadcast_to(episodes, codes.shape[:2])
    return np.stack([codes[..., 0, 0, 0], episodes], axis=-1)


def test_chunks_cover_every_frame_once_in_order_with_its_episode():
  batch, total = 2, 100
  codes = np.arange(batch * total).reshape(batch, total, 1, 1, 1)
  episodes = np.repeat([0, 3, 5], [40, 30, 30])
  # Windows of 8 frames, the first 8 new, then 6 new each (as Generator.stream yields them).
  starts = [0] + list(range(8, total, 6))
  chunks = ((s, codes[:, s:min(s + (8 if s == 0 else 6), total)]) for s in starts)
  recorder = _Recorder()
  out = np.concatenate(list(job.render_in_chunks(recorder, chunks, episodes)), axis=1)
  np.testing.assert_array_equal(out[..., 0], codes[..., 0, 0, 0])
  np.testing.assert_array_equal(out[..., 1], np.broadcast_to(episodes, (batch, total)))
  chunk = generator.DECODE_CHUNK
  assert recorder.calls == [chunk] * (total // chunk) + [total % chunk]
