"""Where the training loop's metrics go: TensorBoard event files in the workdir (process 0), and
the console (every process), one `[step] name=value, ...` line per call; `write_images` puts
uint8 images in TensorBoard's image tab (the dVAE's reconstructions, the prior's previews).

The events are written with tensorboard's protos, not clu's writer, which imports TensorFlow (~7 s
of CPU at each process start); where tensorboard is missing the metrics go to the console only.
"""

from collections.abc import Mapping
import io
import itertools
import os
import socket
import time

from absl import logging
from etils import epath
import jax
import numpy as np


class _LoggingWriter:
  """Console-only writer: what processes > 0 get, and everyone where tensorboard is missing."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))

  def write_images(self, step: int, images: Mapping[str, "np.ndarray"]) -> None:
    """uint8 images [H, W, 3] by tag: TensorBoard's image tab (the console gets only a line)."""
    logging.info("[%d] images: %s", step, ", ".join(images))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class _EventWriter(_LoggingWriter):
  """TensorBoard scalar events in `workdir`, and the console lines. Written with tensorboard's
  protos, not clu's writer, which imports TensorFlow (~7 s of CPU at each process start)."""

  def __init__(self, workdir: str):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    # TensorFlow's naming (time, host, pid, a counter): a rerun never overwrites a file.
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_EVENT_FILES)}.v2")
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)  # as TensorFlow's writer does
    self._file = (workdir / name).open("wb")
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(file_version="brain.Event:2"))

  def _write(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    super().write_scalars(step, scalars)
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])
    self._write(self._event_pb2.Event(step=int(step), summary=summary))

  def write_images(self, step: int, images: Mapping[str, "np.ndarray"]) -> None:
    super().write_images(step, images)
    values = []
    for tag, image in images.items():
      image = np.asarray(image, np.uint8)
      values.append(self._summary_pb2.Summary.Value(tag=tag, image=self._summary_pb2.Summary.Image(
          height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
          encoded_image_string=_png(image))))
    self._write(self._event_pb2.Event(step=int(step), summary=self._summary_pb2.Summary(
        value=values)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


_EVENT_FILES = itertools.count()


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def create_writer(workdir: str):
  """TensorBoard events in `workdir` + console (only process 0 writes events), or console-only
  where tensorboard is missing."""
  if jax.process_index() > 0:
    return _LoggingWriter()
  try:
    return _EventWriter(workdir)
  except ImportError:
    logging.warning("tensorboard is not installed: metrics go to the console only.")
    return _LoggingWriter()
