"""The dVAE's held-out evaluation and its train iterator (`training.dvae.train_and_evaluate`).

Eval reconstructs a fixed held-out set (`load_eval_set`) with the eval-mode step and reports
PSNR, SSIM, per-head code usage and perplexity and the mouth's recoverability, and writes
`workdir/samples/recon_{step}.png` (originals above, reconstructions below), also as a
TensorBoard image.
"""

from collections.abc import Callable
import io
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from nwt_jax.data import input_pipeline
from nwt_jax.evaluation import metrics as metrics_lib
from nwt_jax.training import loop
from nwt_jax.training import sharding

PyTree = Any


class FrameIterator:
  """The train iterator, passing on only what the step uses (video, episode)."""

  def __init__(self, iterator: input_pipeline.DataIterator):
    self._it = iterator

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    return {"video": batch["video"], "episode": batch["episode"]}

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state) -> None:
    self._it.set_state(state)

  def close(self) -> None:
    self._it.close()


def load_eval_set(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The held-out frames every eval reconstructs, the same on every process: video uint8
  [N, H, W, 3], episode int32 [N] and, for synthetic data, truth float32 [N, 7], with
  N = eval_batches x eval_batch_size clips x eval_frames_per_clip frames (fewer if the split
  is smaller)."""
  tc = config.train
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.batch_size = tc.eval_batch_size
  data.frames_per_example = tc.eval_frames_per_clip
  data.drop_remainder = True
  batches = []
  with input_pipeline.create_iterator(data, tc.eval_split, seed=config.seed) as it:
    for _ in range(tc.eval_batches):
      try:
        batches.append(next(it))
      except StopIteration:
        break
  if not batches:
    raise ValueError(f"the {tc.eval_split} split has fewer than eval_batch_size="
                     f"{tc.eval_batch_size} clips")
  frames = lambda x: x.reshape((-1,) + x.shape[2:])  # [B, T, ...] -> [B*T, ...]
  out = {"video": frames(np.concatenate([b["video"] for b in batches]))}
  clips = np.concatenate([b["episode"] for b in batches])
  out["episode"] = np.repeat(clips, batches[0]["video"].shape[1]).astype(np.int32)
  if "truth" in batches[0]:
    out["truth"] = frames(np.concatenate([b["truth"] for b in batches]))
  return out


def _global_array(x: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
  """A global array from host data every process holds in full."""
  return jax.make_array_from_callback(x.shape, sharding_, lambda index: x[index])


def reconstruct(s: loop.Setup, params: PyTree, eval_set: dict[str, np.ndarray],
                chunk: int) -> dict[str, np.ndarray]:
  """Eval-mode reconstructions and codes of `eval_set`, `chunk` frames per call."""
  out = []
  for start in range(0, len(eval_set["video"]), chunk):
    batch = {k: _global_array(eval_set[k][start:start + chunk], sharding.batch_sharding(s.mesh))
             for k in ("video", "episode")}
    out.append(jax.device_get(s.eval_step(params, batch)))
  return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def evaluate_reconstructions(eval_set: dict[str, np.ndarray], recon: np.ndarray,
                             indices: np.ndarray, num_codes: int) -> dict[str, float]:
  """`metrics.reconstruction_metrics` of the eval set (mouth_r by pixels where it has truth)."""
  truth = eval_set.get("truth")
  measured = (None if truth is None else
              metrics_lib.mouth_area_ratio(recon, truth, eval_set["episode"]))
  return metrics_lib.reconstruction_metrics(eval_set["video"], recon, indices, num_codes,
                                            truth=truth, measured_mouth=measured)


def sample_grid(originals: np.ndarray, recon: np.ndarray, zoom: int = 2) -> np.ndarray:
  """uint8 grid image: originals [K, H, W, 3] on top, reconstructions below, `zoom`x nearest."""
  k, h, w, _ = originals.shape
  gap = 2
  grid = np.full((2 * h + 3 * gap, k * (w + gap) + gap, 3), 255, np.uint8)
  for row, frames in enumerate((originals, recon)):
    for i, frame in enumerate(frames):
      top, left = gap + row * (h + gap), gap + i * (w + gap)
      grid[top:top + h, left:left + w] = frame
  return np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)


def write_samples(path: str, originals: np.ndarray, recon: np.ndarray, zoom: int = 2) -> None:
  """`sample_grid` as a PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = sample_grid(originals, recon, zoom)
  buffer = io.BytesIO()
  Image.fromarray(grid).save(buffer, format="PNG")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())


def make_eval_fn(s: loop.Setup, config: ml_collections.ConfigDict,
                 eval_set: dict[str, np.ndarray], workdir: str,
                 writer=None) -> Callable[[loop.TrainState, int], dict[str, float]]:
  """`eval_fn(state, step)` for `loop.run`: metrics of the eval set's reconstructions,
  and (process 0) `workdir/samples/recon_{step}.png`, also as the image `eval/reconstructions`
  of `writer` (`metric_writer`; None: no image)."""
  tc = config.train
  chunk = tc.eval_batch_size * tc.eval_frames_per_clip

  def eval_fn(state, step):
    out = reconstruct(s, state.params, eval_set, chunk)
    metrics = evaluate_reconstructions(eval_set, out["recon"], out["indices"],
                                       config.dvae.num_codes)
    if jax.process_index() == 0 and tc.num_samples > 0:
      k = tc.num_samples
      write_samples(os.path.join(workdir, "samples", f"recon_{step}.png"),
                    eval_set["video"][:k], out["recon"][:k])
      if writer is not None:
        writer.write_images(step, {"eval/reconstructions": sample_grid(
            eval_set["video"][:k], out["recon"][:k])})
    logging.info("eval at step %d: PSNR %.2f dB, SSIM %.3f, code usage min %.2f mean %.2f, "
                 "perplexity %.1f, mouth r %.3f", step, metrics["psnr"], metrics["ssim"],
                 metrics["usage_min"], metrics["usage_mean"], metrics["perplexity_mean"],
                 metrics.get("mouth_r", float("nan")))
    return metrics

  return eval_fn


