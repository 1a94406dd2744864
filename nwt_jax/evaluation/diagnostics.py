"""Where the prior's lipsync is lost, measured on held-out synthetic clips (evaluation only: these
read the synthetic world's truth, which training and generation never do).

    python -m nwt_jax.evaluate ... --diagnostics

  * the ceiling: the probe's lipsync r on the clips' own frames and on the dVAE's reconstructions
    of them (no prior involved): what a perfect prior could reach through this dVAE;
  * the share of the prior's loss weight (`loss.change_weight`, `loss.frame0_weight`) that goes to
    frame 0, to codes that change, to the mouth's cells and to the mouth's changed codes, on the
    dVAE's codes of the clips cut into training windows;
  * code instability: how often a mouth cell's code flips between frames where the mouth does
    not move, against where it moves.
"""

import numpy as np

from nwt_jax.data import synthetic
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import metrics as m
from nwt_jax.evaluation import probe as probe_lib

MOUTH_OPEN = synthetic.TRUTH_KEYS.index("mouth_open")
STILL = 0.01  # |change of mouth_open| per frame below which the mouth counts as still


def mouth_cells(clip: dict, grid: tuple[int, int]) -> np.ndarray:
  """bool [T, gh, gw]: the code cells that hold any pixel of the clip's mouth region."""
  region, _ = synthetic.mouth_region(clip["truth"], clip["episode"], *clip["video"].shape[1:3])
  frames, height, width = region.shape
  cells = region.reshape(frames, grid[0], height // grid[0], grid[1], width // grid[1])
  return cells.any(axis=(2, 4))


def loss_weight_shares(codes: np.ndarray, mouth: np.ndarray, *, window: int,
                       change_weight: float, frame0_weight: float) -> dict[str, float]:
  """codes int [N, T, gh, gw, K], mouth bool [N, T, gh, gw] -> the shares of the total loss
  weight on frame 0 of each window, on changed codes (frames >= 1), on mouth cells, and on the
  mouth's changed codes; as `losses.code_losses` weighs them with the true previous frames."""
  n, frames = codes.shape[:2]
  usable = frames // window * window
  w = codes[:, :usable].reshape((n * usable // window, window) + codes.shape[2:])
  mouth = np.broadcast_to(mouth[:, :usable, ..., None], codes[:, :usable].shape).reshape(w.shape)
  changed = np.zeros(w.shape, bool)
  changed[:, 1:] = w[:, 1:] != w[:, :-1]
  first = np.zeros(w.shape, bool)
  first[:, 0] = True
  weights = np.where(first, frame0_weight, np.where(changed, change_weight, 1.0))
  total = weights.sum()
  return {"loss_share_frame0": float(weights[first].sum() / total),
          "loss_share_changed": float(weights[changed].sum() / total),
          "loss_share_mouth_cells": float(weights[mouth].sum() / total),
          "loss_share_mouth_changed": float(weights[mouth & changed].sum() / total),
          "changed_code_fraction": float(changed[:, 1:].mean())}


def mouth_code_flips(codes: np.ndarray, mouth: np.ndarray, mouth_open: np.ndarray
                     ) -> dict[str, float]:
  """codes [N, T, gh, gw, K], mouth [N, T, gh, gw], mouth_open truth [N, T] -> the fraction of
  mouth-cell codes that differ from the previous frame's, where the mouth is still and where it
  moves (|change of mouth_open| below / above STILL)."""
  flips = codes[:, 1:] != codes[:, :-1]  # [N, T-1, gh, gw, K]
  cells = (mouth[:, 1:] & mouth[:, :-1])[..., None] & np.ones_like(flips)
  still = (np.abs(np.diff(mouth_open, axis=1)) < STILL)[:, :, None, None, None]
  return {"mouth_code_flips_still": float(flips[cells & still].mean()),
          "mouth_code_flips_moving": float(flips[cells & ~still].mean()),
          "mouth_still_fraction": float(still.mean())}


def diagnose(models, probe: probe_lib.Probe, clips: list[dict], *, change_weight: float,
             frame0_weight: float) -> dict[str, float]:
  """All of the above on held-out clips (the synthetic world's, with their truth)."""
  codes, recon = jobs.dvae_roundtrip(models, clips)
  truth = [c["truth"][:, MOUTH_OPEN] for c in clips]

  def probe_r(videos):
    read = [probe_lib.probe_predict(probe, v)["mouth_open"] for v in videos]
    return m.lipsync(read, truth)["r"]

  grid = codes.shape[2:4]
  mouth = np.stack([mouth_cells(c, grid) for c in clips])
  out = {"ceiling_probe_r_frames": probe_r([c["video"] for c in clips]),
         "ceiling_probe_r_reconstructions": probe_r(recon)}
  out.update(loss_weight_shares(codes, mouth, window=models.window_frames,
                                change_weight=change_weight, frame0_weight=frame0_weight))
  out.update(mouth_code_flips(codes, mouth, np.stack(truth)))
  return out
