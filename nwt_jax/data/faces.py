"""Face boxes for framing real footage: detect, smooth over time, crop around, locate the mouth.

    boxes = detect_faces(frames[::8])            # [N, 4] (x0, y0, x1, y1) pixels, NaN: no face
    box = crop_box(smooth_boxes(boxes), frames.shape[1:3], (64, 56))   # one box per clip
    clip = frames[:, box[1]:box[3], box[0]:box[2]]                      # then resize to 64x56

The detector is OpenCV's bundled frontal-face Haar cascade (`cv2.data.haarcascades`, shipped in
the opencv-python-headless wheel: nothing is downloaded). It runs on a downscaled grey copy of
each frame it is given (callers pass a subsample, e.g. every 8th frame) and keeps the largest face
of a frame: the presenter, in footage of one. cv2 is imported on use (GPU machines lack it).
Safe to call from several threads at once: each thread has its own classifier (one shared
classifier fails on frames of different sizes searched concurrently).
"""

import threading

import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIZE = 320  # frames are downscaled to this long side before detection
MIN_FACE = 0.08  # the smallest face searched for, as a share of the frame's short side
MARGIN = 0.6  # crop_box: context around the face, as a share of its size on each side


_local = threading.local()  # this thread's classifier: cv2's is not safe to share


def _cascade():
  cascade = getattr(_local, "cascade", None)
  if cascade is None:
    import cv2  # pylint: disable=g-import-not-at-top  (optional: GPU machines lack it)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if cascade.empty():
      raise RuntimeError(f"OpenCV's bundled {CASCADE} could not be loaded from "
                         f"{cv2.data.haarcascades}")
    _local.cascade = cascade
  return cascade


def detect_faces(frames: np.ndarray) -> np.ndarray:
  """The largest face of each frame: float [N, 4] (x0, y0, x1, y1) in pixels, NaN rows: none.

  frames: uint8 [N, H, W, 3] RGB.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
  height, width = frames.shape[1:3]
  scale = min(1.0, DETECT_SIZE / max(height, width))
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  min_side = max(12, round(MIN_FACE * min(size)))
  boxes = np.full((len(frames), 4), np.nan)
  for i, frame in enumerate(frames):
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
      grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    grey = cv2.equalizeHist(grey)
    found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(min_side, min_side))
    if len(found):
      x, y, w, h = max(found, key=lambda f: f[2] * f[3])
      boxes[i] = np.array([x, y, x + w, y + h], np.float64) / scale
  return boxes


def smooth_boxes(boxes: np.ndarray, window: int = 5) -> np.ndarray:
  """Boxes over time without jitter or gaps: NaN rows filled by linear interpolation (the nearest
  detection at either end), then a running median over `window` rows. All-NaN stays all-NaN."""
  boxes = np.asarray(boxes, np.float64)
  found = ~np.isnan(boxes).any(axis=-1)
  if not found.any():
    return np.full_like(boxes, np.nan)
  time = np.arange(len(boxes))
  filled = np.stack([np.interp(time, time[found], boxes[found, k]) for k in range(4)], axis=-1)
  half = max(0, window // 2)
  padded = np.concatenate([filled[:1].repeat(half, 0), filled, filled[-1:].repeat(half, 0)])
  return np.stack([np.median(padded[t:t + 2 * half + 1], axis=0) for t in time])


def crop_box(boxes: np.ndarray, frame_hw: tuple[int, int], out_hw: tuple[int, int],
             margin: float = MARGIN) -> tuple[int, int, int, int] | None:
  """One crop (x0, y0, x1, y1) for the frames of `boxes` (the face boxes of a clip, NaN rows
  ignored), None when no row has a face.

  The crop has the aspect ratio of `out_hw`, is centred on the median face centre, and spans the
  median face size plus `margin` of it on each side; it shrinks to fit a frame too small for it
  and then shifts to stay inside the frame (the face then off-centre, never cut by the shift).
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  boxes = boxes[~np.isnan(boxes).any(axis=-1)]
  if not len(boxes):
    return None
  frame_h, frame_w = frame_hw
  aspect = out_hw[1] / out_hw[0]  # width / height
  x0, y0, x1, y1 = np.median(boxes, axis=0)
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  size = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
  crop_h = size / aspect if aspect <= 1 else size  # face + margins span the shorter side
  crop_h = min(crop_h, frame_h, frame_w / aspect)
  crop_w = crop_h * aspect
  h, w = max(1, round(crop_h)), max(1, round(crop_w))
  left = int(np.clip(round(cx - w / 2), 0, frame_w - w))
  top = int(np.clip(round(cy - h / 2), 0, frame_h - h))
  return left, top, left + w, top + h


def mouth_box(face_box: np.ndarray) -> np.ndarray:
  """The mouth region of face boxes [..., 4] (x0, y0, x1, y1): the middle half of the width and
  62%-92% of the height of a frontal-face box (Haar boxes span brows to chin)."""
  face_box = np.asarray(face_box, np.float64)
  x0, y0, x1, y1 = np.moveaxis(face_box, -1, 0)
  w, h = x1 - x0, y1 - y0
  return np.stack([x0 + 0.25 * w, y0 + 0.62 * h, x1 - 0.25 * w, y0 + 0.92 * h], axis=-1)


def crop_and_resize(frames: np.ndarray, box: tuple[int, int, int, int],
                    out_hw: tuple[int, int]) -> np.ndarray:
  """frames uint8 [N, H, W, 3] cut to `box` and resized (area averaging) to out_hw."""
  import cv2  # pylint: disable=g-import-not-at-top
  x0, y0, x1, y1 = box
  size = (out_hw[1], out_hw[0])
  return np.stack([cv2.resize(np.ascontiguousarray(f[y0:y1, x0:x1]), size,
                              interpolation=cv2.INTER_AREA) for f in frames])


def clip_crop(frames: np.ndarray, out_hw: tuple[int, int], *, every: int = 8,
              margin: float = MARGIN) -> tuple[tuple[int, int, int, int] | None, int, int]:
  """(crop box or None, frames searched, frames without a face) for one clip's frames, searching
  every `every`-th frame (from the clip's middle offset: [every//2::every])."""
  sampled = frames[every // 2::every] if len(frames) > every // 2 else frames[:1]
  boxes = detect_faces(sampled)
  missing = int(np.isnan(boxes).any(axis=-1).sum())
  box = crop_box(smooth_boxes(boxes), frames.shape[1:3], out_hw, margin=margin)
  return box, len(sampled), missing
