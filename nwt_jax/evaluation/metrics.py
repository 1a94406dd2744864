"""The metrics, as pure functions (numpy) over probe readings, frames and code indices.

Readings are what `nwt_jax.evaluation.probe.probe_predict` returns: a dict of per-frame float
arrays keyed by `synthetic.TRUTH_KEYS`, plus `episode_probs` [T, E] and `episode` [T].

- lipsync: `lipsync` (r at offset 0, best audio-video offset) and `shuffled_lipsync` (the control:
  each clip's mouth against another clip's audio truth, ~0).
- style control: `style_error` (probe camera/zoom vs a reference clip's truth) and
  `traversal_monotonicity` (along one latent dimension's mu - 2 sigma ... mu + 2 sigma).
- episode control: `episode_accuracy`, overall and in a window after each mid-video switch.
- reconstruction: `psnr`, `ssim` (dm-pix), `code_usage` (per-head usage and perplexity), and
  `mouth_recoverability` (the dVAE's mouth bar) with its probe-free pixel measure
  `mouth_area_ratio`.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from nwt_jax.data import constants
from nwt_jax.data import synthetic
from nwt_jax.models import memcodes

TRUTH_KEYS = synthetic.TRUTH_KEYS
TRUTH_RANGES = synthetic.TRUTH_RANGES
STYLE_ERROR_KEYS = ("cam_x", "cam_y", "zoom")  # per-clip constants; tilt also sways


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two equal-length sequences; NaN if either is constant."""
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"pearson needs equal lengths, got {x.shape} and {y.shape}")
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else float("nan")


def truth_dict(truth: np.ndarray) -> dict[str, np.ndarray]:
  """Truth [T, 7] (TRUTH_KEYS order) -> {key: [T]}, the layout of probe readings."""
  truth = np.asarray(truth)
  return {key: truth[:, i] for i, key in enumerate(TRUTH_KEYS)}


def _as_list(seqs) -> list[np.ndarray]:
  """One sequence [T] or several (a list of [T_i], or [N, T]) -> a list of float arrays."""
  if np.ndim(seqs[0]) == 0:
    return [np.asarray(seqs, np.float64)]
  return [np.asarray(s, np.float64) for s in seqs]


# ----------------------------------------------------------------------------------------------
# Lipsync


def _shifted_pairs(preds: list[np.ndarray], truths: list[np.ndarray], offset: int):
  """(pred[t + offset], truth[t]) over every t valid in each clip, pooled over the clips."""
  p, t = [], []
  for pred, truth in zip(preds, truths):
    n = len(pred)
    lo, hi = max(0, -offset), min(n, n - offset)
    p.append(pred[lo + offset:hi + offset])
    t.append(truth[lo:hi])
  return np.concatenate(p), np.concatenate(t)


def lipsync(pred_mouth_open, true_mouth_open, *, max_offset: int = 5) -> dict:
  """Lipsync r of probe mouth_open on generated frames against the driving audio's truth.

  Takes one clip ([T] arrays) or lists of clips (pooled: pairs never cross a clip boundary).
  At offset k the pairs are (pred[t + k], truth[t]): k > 0 means the video lags the audio by k
  frames. Returns {'r': r at offset 0, 'best_offset': argmax over k in [-max_offset, max_offset]
  of r(k) (0 if every r is NaN), 'best_r': r there, 'offsets': [2K+1], 'r_by_offset': [2K+1]}.
  """
  preds, truths = _as_list(pred_mouth_open), _as_list(true_mouth_open)
  if len(preds) != len(truths) or any(len(p) != len(t) for p, t in zip(preds, truths)):
    raise ValueError("every predicted sequence needs a truth sequence of the same length")
  if min(len(p) for p in preds) <= max_offset:
    raise ValueError(f"clips must be longer than max_offset={max_offset} frames")
  offsets = np.arange(-max_offset, max_offset + 1)
  rs = np.array([pearson(*_shifted_pairs(preds, truths, int(k))) for k in offsets])
  # Ties (e.g. a linear ramp) go to the offset nearest 0; NaNs (constant signals) never win.
  nearest_first = np.argsort(np.abs(offsets), kind="stable")
  ranked = np.nan_to_num(np.round(rs[nearest_first], 12), nan=-np.inf)
  best = int(nearest_first[np.argmax(ranked)])
  return {"r": float(rs[max_offset]), "best_offset": int(offsets[best]),
          "best_r": float(rs[best]), "offsets": offsets, "r_by_offset": rs}


def shuffled_lipsync(pred_mouth_opens: Sequence[np.ndarray],
                     true_mouth_opens: Sequence[np.ndarray]) -> float:
  """The shuffled-audio control: clip i's predicted mouth_open against clip (i + 1) mod n's
  truth (cut to the shorter length), pooled r at offset 0. Near 0 when the video follows its
  own audio and nothing else. Needs at least two clips whose audio differs."""
  preds, truths = _as_list(pred_mouth_opens), _as_list(true_mouth_opens)
  if len(preds) != len(truths) or len(preds) < 2:
    raise ValueError("shuffled_lipsync needs two or more clips, each with its truth")
  p, t = [], []
  for i, pred in enumerate(preds):
    other = truths[(i + 1) % len(truths)]
    n = min(len(pred), len(other))
    p.append(pred[:n])
    t.append(other[:n])
  return pearson(np.concatenate(p), np.concatenate(t))


# ----------------------------------------------------------------------------------------------
# Style control


def style_error(readings: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *,
                keys: Sequence[str] = STYLE_ERROR_KEYS) -> dict[str, float]:
  """Mean absolute error of per-frame readings against a reference clip's style.

  `reference` holds the reference clip's truth per key (e.g. `truth_dict(clip['truth'])`, or
  probe readings of the reference frames); its mean over frames is the target, so the videos may
  differ in length. Returns {key: error} and 'mean' (over keys).
  """
  errors = {key: float(np.mean(np.abs(np.asarray(readings[key], np.float64)
                                      - np.mean(reference[key])))) for key in keys}
  errors["mean"] = float(np.mean([errors[key] for key in keys]))
  return errors


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 0..n-1 with ties sharing their average rank."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (Pearson r of the ranks); NaN if either is constant."""
  return pearson(_ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64)))


def traversal_monotonicity(readings: Mapping[str, np.ndarray], *,
                           keys: Sequence[str] = TRUTH_KEYS) -> dict:
  """How monotonically each truth key follows a traversal of one latent dimension.

  `readings[key]` is [S] or [S, T]: probe readings at S increasing latent values (mu - 2 sigma
  ... mu + 2 sigma), T frames each (averaged). Returns per key: 'spearman' (rank correlation with
  the step index; 1 or -1 when monotone, NaN when constant), 'monotone_fraction' (the larger of
  the fractions of steps that rise and that fall) and 'span' (max - min of the reading over the
  key's full range, TRUTH_RANGES); and 'controls', the key with the largest span (the one this
  latent dimension moves most), with 'controls_spearman'.
  """
  spearmans, fractions, spans = {}, {}, {}
  for key in keys:
    values = np.asarray(readings[key], np.float64)
    values = values.mean(axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values
    steps = np.diff(values)
    spearmans[key] = spearman(np.arange(len(values)), values)
    fractions[key] = float(max(np.mean(steps > 0), np.mean(steps < 0)))
    lo, hi = TRUTH_RANGES[TRUTH_KEYS.index(key)]
    spans[key] = float((values.max() - values.min()) / (hi - lo))
  controls = max(keys, key=lambda k: spans[k])
  return {"spearman": spearmans, "monotone_fraction": fractions, "span": spans,
          "controls": controls, "controls_spearman": spearmans[controls]}


# ----------------------------------------------------------------------------------------------
# Episode control


def episode_accuracy(predicted: np.ndarray, requested: np.ndarray, *,
                     window: int = constants.FPS) -> dict:
  """Probe episode accuracy against the requested per-frame episode ids of one video.

  `predicted` is episode probabilities [T, E] or ids [T]. 'after_switch_accuracy' covers the
  `window` frames from each frame whose requested episode differs from the previous frame's (cut
  at the next switch); NaN when the video has no switch. Returns {'accuracy',
  'after_switch_accuracy', 'num_switches'}.
  """
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  ids = predicted.argmax(axis=-1) if predicted.ndim == 2 else predicted
  if ids.shape != requested.shape:
    raise ValueError(f"predicted {ids.shape} and requested {requested.shape} frames differ")
  correct = ids == requested
  switches = np.flatnonzero(requested[1:] != requested[:-1]) + 1
  in_window = np.zeros(len(requested), bool)
  for start, end in zip(switches, np.append(switches[1:], len(requested))):
    in_window[start:min(start + window, end)] = True
  after = float(correct[in_window].mean()) if in_window.any() else float("nan")
  return {"accuracy": float(correct.mean()), "after_switch_accuracy": after,
          "num_switches": int(len(switches))}


# ----------------------------------------------------------------------------------------------
# Reconstruction


def _unit_range(frames: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] frames [..., H, W, 3] -> float32 [N, H, W, 3] in [0, 1]."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    unit = frames.astype(np.float32) / 255.0
  elif np.issubdtype(frames.dtype, np.floating):
    unit = (frames.astype(np.float32) + 1.0) / 2.0
  else:
    raise ValueError(f"frames must be uint8 or float in [-1, 1], got {frames.dtype}")
  return unit.reshape((-1,) + unit.shape[-3:])


def psnr(originals: np.ndarray, reconstructions: np.ndarray) -> float:
  """Mean per-frame PSNR in dB (dm-pix, peak 1 after mapping to [0, 1]).

  Each input is uint8 [..., H, W, 3] in [0, 255] or float [..., H, W, 3] in [-1, 1] (the models'
  range), judged by its dtype. Identical frames have infinite PSNR, so the mean is +inf then.
  """
  import dm_pix  # lazily: GPU machines lack it

  return float(np.mean(np.asarray(
      dm_pix.psnr(_unit_range(originals), _unit_range(reconstructions)))))


def ssim(originals: np.ndarray, reconstructions: np.ndarray) -> float:
  """Mean per-frame SSIM (dm-pix defaults: 11-tap Gaussian window, sigma 1.5, k1 0.01, k2 0.03,
  peak 1 after mapping to [0, 1]); inputs as for `psnr`. 1.0 for identical frames."""
  import dm_pix  # lazily: GPU machines lack it

  return float(np.mean(np.asarray(
      dm_pix.ssim(_unit_range(originals), _unit_range(reconstructions), max_val=1.0))))


def code_usage(indices: np.ndarray, num_codes: int) -> dict[str, np.ndarray]:
  """Per-head code usage from Memcodes indices [..., heads] (int, in [0, num_codes)).

  Returns 'usage' [heads] (fraction of the num_codes codes used at least once) and 'perplexity'
  [heads] (exp of the entropy of the empirical code distribution: k when k codes are used
  equally often, 1 when one code is used): `memcodes.usage_stats`, the statistics training logs,
  of counts taken here on the host.
  """
  indices = np.asarray(indices)
  flat = indices.reshape(-1, indices.shape[-1])
  if flat.size and (flat.min() < 0 or flat.max() >= num_codes):
    raise ValueError(f"indices must be in [0, {num_codes})")
  counts = np.stack([np.bincount(flat[:, h], minlength=num_codes) for h in range(flat.shape[1])])
  stats = memcodes.usage_stats(counts.astype(np.float32))
  return {key: np.asarray(value, np.float64) for key, value in stats.items()}


def _darkness(frames: np.ndarray) -> np.ndarray:
  """Per pixel, 0 for skin and 1 for the mouth's colour (by luma), clipped to [0, 1]."""
  luma = lambda rgb: rgb @ np.array([0.299, 0.587, 0.114])
  skin, mouth = luma(synthetic.SKIN), luma(synthetic.MOUTH)
  return np.clip((skin - luma(frames.astype(np.float64) / 255.0)) / (skin - mouth), 0.0, 1.0)


def mouth_area_ratio(frames: np.ndarray, truth: np.ndarray, episode) -> np.ndarray:
  """A probe-free mouth-opening measure for frames whose truth is known (reconstructions).

  The mouth region is where the frame drawn from `truth` with the mouth fully open differs from
  it drawn with the mouth closed, grown by one pixel (for blur and the closed lips' line). The
  measure is the frame's darkness (0 skin, 1 mouth colour) summed over the region, divided by the
  fully open mouth's: linear in mouth_open (about 0.1 closed, 1.0 fully open) at any width, zoom
  or tilt. frames uint8 [T, H, W, 3], truth [T, 7], episode int or int [T] -> float [T].
  """
  frames = np.asarray(frames)
  region, drawn_open = synthetic.mouth_region(truth, episode, *frames.shape[1:3])
  open_darkness = (_darkness(drawn_open) * region).sum(axis=(1, 2))
  return (_darkness(frames) * region).sum(axis=(1, 2)) / np.maximum(open_darkness, 1e-9)


def mouth_recoverability(measured: np.ndarray, truth: np.ndarray) -> float:
  """Pearson r between the mouth opening `measured` on reconstructions [T] (by the probe, or by
  `mouth_area_ratio`) and the truth [T, 7] of the frames they reconstruct."""
  return pearson(measured, np.asarray(truth)[:, TRUTH_KEYS.index("mouth_open")])


def reconstruction_metrics(originals: np.ndarray, recon: np.ndarray, indices: np.ndarray,
                           num_codes: int, *, truth: np.ndarray | None = None,
                           measured_mouth: np.ndarray | None = None) -> dict[str, float]:
  """The dVAE's metrics, one vocabulary for training's eval and `python -m nwt_jax.evaluate`:
  psnr, ssim, usage_min / usage_mean / perplexity_mean and each head's usage/headK and
  perplexity/headK, and with the frames' truth [N, 7] mouth_r, the mouth's recoverability from
  `measured_mouth` [N] (the probe's reading, or `mouth_area_ratio`'s)."""
  out = {"psnr": psnr(originals, recon), "ssim": ssim(originals, recon)}
  usage = code_usage(indices, num_codes)
  out.update(usage_min=float(usage["usage"].min()), usage_mean=float(usage["usage"].mean()),
             perplexity_mean=float(usage["perplexity"].mean()))
  for head, (u, p) in enumerate(zip(usage["usage"], usage["perplexity"])):
    out[f"usage/head{head}"] = float(u)
    out[f"perplexity/head{head}"] = float(p)
  if truth is not None and measured_mouth is not None:
    out["mouth_r"] = mouth_recoverability(measured_mouth, truth)
  return out

# ----------------------------------------------------------------------------------------------
# Frame integrity: is each frame still a clean face?


def frame_psnr(frames: np.ndarray, references: np.ndarray) -> np.ndarray:
  """Per-frame PSNR in dB of uint8 frames [N, H, W, 3] against references of the same shape
  (peak 255; identical frames give +inf)."""
  frames, references = np.asarray(frames, np.float64), np.asarray(references, np.float64)
  if frames.shape != references.shape:
    raise ValueError(f"frames {frames.shape} and references {references.shape} differ")
  mse = np.mean((frames - references) ** 2, axis=tuple(range(1, frames.ndim)))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(255.0 ** 2 / mse)


def integrity_psnr(frames: np.ndarray, readings: Mapping[str, np.ndarray]) -> np.ndarray:
  """Per-frame PSNR between frames [N, H, W, 3] and the clean face the synthetic world draws from
  the probe's reading of them (`readings`: probe_predict of these frames; values clipped to
  TRUTH_RANGES). A frame with stray patches (a second mouth, a smeared jaw) has no truth that
  draws it, so it scores low; a clean one scores as high as the probe and the renderer allow."""
  frames = np.asarray(frames)
  truth = np.stack([np.clip(readings[key], lo, hi)
                    for key, (lo, hi) in zip(TRUTH_KEYS, TRUTH_RANGES)], axis=-1)
  clean = synthetic.render_frames(truth, readings["episode"], *frames.shape[1:3])
  return frame_psnr(frames, clean)


def per_second(values: np.ndarray, *, fps: int = constants.FPS) -> list[float]:
  """Means of per-frame values [..., T] over each whole or partial second of T (pooled over any
  leading axes): a curve over time."""
  values = np.asarray(values, np.float64)
  values = values.reshape(-1, values.shape[-1])
  return [float(np.mean(values[:, start:start + fps]))
          for start in range(0, values.shape[1], fps)]
