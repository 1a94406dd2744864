"""The opening-frame bank: which frames it keeps, and its file."""

import numpy as np
import pytest

from nwt_jax.data import frame_bank


class _Clips:
  """A token source stub: clip i's frame t has every code equal to 10 * i + t."""

  def __init__(self, num_clips, frames):
    self._num, self._frames = num_clips, frames

  def __len__(self):
    return self._num

  def clip(self, index):
    t = np.arange(self._frames)
    return {"codes": np.broadcast_to((10 * index + t)[:, None, None, None],
                                     (self._frames, 2, 3, 2))}


def test_every_kth_frame_across_clips_up_to_the_cap():
  # 3 clips x 5 frames, at most 4 kept: every 4th of the 15 frames (0, 4, 8, 12), counted on
  # across clip boundaries: clip 0 frames 0 and 4, clip 1 frame 3, clip 2 frame 2.
  bank = frame_bank.build(_Clips(3, 5), max_frames=4)
  assert bank.shape == (4, 2, 3, 2) and bank.dtype == np.int16
  np.testing.assert_array_equal(bank[:, 0, 0, 0], [0, 4, 13, 22])
  # A cap above the frame count keeps every frame, in order.
  every = frame_bank.build(_Clips(3, 5), max_frames=100)
  np.testing.assert_array_equal(every[:, 1, 2, 1], [10 * i + t for i in range(3) for t in range(5)])
  with pytest.raises(ValueError, match="no clips"):
    frame_bank.build(_Clips(0, 5))


def test_save_and_load(tmp_path):
  assert frame_bank.load(str(tmp_path)) is None  # a workdir without a bank
  bank = frame_bank.build(_Clips(2, 3))
  frame_bank.save(str(tmp_path), bank)
  loaded = frame_bank.load(str(tmp_path))
  assert loaded.dtype == np.int32
  np.testing.assert_array_equal(loaded, bank)
  assert [p.name for p in tmp_path.iterdir()] == [frame_bank.FILENAME]  # no temporary left
