"""The evaluation probe: a small CNN that reads the synthetic world's truth back from frames.

The evaluation measures generated video by what a probe sees in it: mouth opening and width, camera
x/y, zoom, tilt, blink and the episode. The probe is trained on frames that
`synthetic.render_frames` draws from random truth vectors (every combination, not only those that
speech and clips produce), mixed with frames of whole clips so natural combinations are covered
too, with random blur and noise so it reads blurry reconstructions without bias. It is trusted only
when `probe_quality` finds Pearson r >= 0.95 per gated key and episode accuracy >= 0.99 on held-out
rendered frames; `require_trusted` raises `UntrustedProbeError` otherwise.

    probe = train_probe(seed=0)             # ~1 minute on 2 CPU cores at 64x56
    require_trusted(probe)
    save_probe(probe, 'runs/demo/probe.npz'); probe = load_probe('runs/demo/probe.npz')
    readings = probe_predict(probe, frames)  # {'mouth_open': [N], ..., 'episode_probs': [N, 8]}

Only jax, flax, optax and numpy are used (fp32), so it runs wherever the models do.
"""

import dataclasses
import functools
import time
from collections.abc import Callable

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from nwt_jax import errors
from nwt_jax.data import synthetic
from nwt_jax.evaluation.metrics import pearson
from nwt_jax.runtime import compile_options

TRUTH_KEYS = synthetic.TRUTH_KEYS
OPTIMISED = {"xla_backend_optimization_level": 3}  # XLA options of the hot jitted steps
TRUTH_RANGES = synthetic.TRUTH_RANGES
# Keys whose r gates trust; blink is measured and reported but not gated.
GATED_KEYS = ("mouth_open", "mouth_width", "cam_x", "cam_y", "zoom", "tilt")
MIN_R = 0.95
# Squared-error weight per truth key (TRUTH_KEYS order). The mouth is a few pixels and is learnt
# last: with equal weights mouth_width needed 1500 steps to reach MIN_R (r 0.92 after 700); with
# these every gated key has r >= 0.97 after 1000 steps (seed 0, 64x56).
LOSS_WEIGHTS = np.array([2.5, 2.5, 0.5, 0.5, 0.5, 0.7, 1.5], np.float32)
MIN_EPISODE_ACCURACY = 0.99
# Seed-sequence tags that keep training and held-out frames disjoint for any seed.
_TRAIN_STREAM, _HELDOUT_STREAM = 0, 1


class UntrustedProbeError(errors.UserError, ValueError):
  """The probe reads truth back too poorly for its measurements to mean anything."""


class ProbeNet(nn.Module):
  """Frames [N, H, W, 3] in [-1, 1] -> (truth [N, 7] scaled to [-1, 1], episode logits [N, E])."""
  widths: tuple[int, ...] = (64, 64, 96, 128)  # channels of the stride-2 conv stages
  hidden: int = 256  # width of the dense layer before the heads
  num_episodes: int = synthetic.NUM_EPISODES  # episode classes

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Space-to-depth instead of a full-resolution conv: it keeps every pixel (mouth and eyelids
    # are a few pixels tall) and is ~10x cheaper on CPU than a 3-channel conv at 64x56.
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, (h + 1) // 2, (w + 1) // 2, 4 * c)
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), name=f"down{i}")(x))
    x = x.reshape(n, -1)  # position matters (camera), so flatten rather than pool
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    truth = nn.Dense(len(TRUTH_KEYS), name="truth_head")(x)
    episode_logits = nn.Dense(self.num_episodes, name="episode_head")(x)
    return truth, episode_logits


@dataclasses.dataclass(frozen=True)
class Probe:
  """Trained probe parameters and the frame size it reads (other sizes are resized to it)."""
  params: dict
  height: int
  width: int


# ----------------------------------------------------------------------------------------------
# Data


def random_truth(rng: np.random.Generator, num: int) -> np.ndarray:
  """Truth [num, 7] drawn uniformly over TRUTH_RANGES."""
  lo, hi = TRUTH_RANGES[:, 0], TRUTH_RANGES[:, 1]
  return (lo + (hi - lo) * rng.random((num, len(TRUTH_KEYS)))).astype(np.float32)


def _render(truth: np.ndarray, episodes: np.ndarray, height: int, width: int,
            chunk: int = 128) -> np.ndarray:
  # Chunks keep render_frames' float64 temporaries in cache (~2x faster than one big call).
  return np.concatenate([
      synthetic.render_frames(truth[i:i + chunk], episodes[i:i + chunk], height, width)
      for i in range(0, len(truth), chunk)])


def heldout_frames(seed: int, num: int, height: int = 64, width: int = 56):
  """Held-out frames from random truth and episodes (never in any seed's training set).

  Returns (frames uint8 [num, H, W, 3], truth float32 [num, 7], episodes int32 [num]).
  """
  rng = np.random.default_rng([_HELDOUT_STREAM, seed])
  truth = random_truth(rng, num)
  episodes = rng.integers(0, synthetic.NUM_EPISODES, num).astype(np.int32)
  return _render(truth, episodes, height, width), truth, episodes


def _training_set(seed: int, num_random: int, num_clips: int, height: int, width: int):
  """Random-truth frames (half of them with open eyes, as clips mostly are) plus clip frames."""
  rng = np.random.default_rng([_TRAIN_STREAM, seed])
  truth = random_truth(rng, num_random)
  truth[rng.random(num_random) < 0.5, TRUTH_KEYS.index("blink")] = 0.0
  episodes = rng.integers(0, synthetic.NUM_EPISODES, num_random).astype(np.int32)
  clips = [synthetic.make_clip(int(s), height=height, width=width)
           for s in rng.integers(0, 2 ** 31, num_clips)]
  frames = np.concatenate([_render(truth, episodes, height, width)] + [c["video"] for c in clips])
  truth = np.concatenate([truth] + [c["truth"] for c in clips])
  episodes = np.concatenate(
      [episodes] + [np.full(len(c["truth"]), c["episode"], np.int32) for c in clips])
  return frames, truth, episodes


# ----------------------------------------------------------------------------------------------
# Training


def _to_float(frames: jax.Array) -> jax.Array:
  return frames.astype(jnp.float32) / 127.5 - 1.0


def _scale_truth(truth: jax.Array) -> jax.Array:
  lo, hi = TRUTH_RANGES[:, 0], TRUTH_RANGES[:, 1]
  return (truth - (lo + hi) / 2) / ((hi - lo) / 2)


def _unscale_truth(scaled: jax.Array) -> jax.Array:
  lo, hi = TRUTH_RANGES[:, 0], TRUTH_RANGES[:, 1]
  return scaled * ((hi - lo) / 2) + (lo + hi) / 2


def _augment(key: jax.Array, x: jax.Array, noise_bank: jax.Array) -> jax.Array:
  """Random Gaussian blur (sigma up to 1.2 px; half the frames stay sharp) and pixel noise on
  [-1, 1] frames: without it the probe under-reads mouth_open on blurry frames by ~0.1.

  The noise is a random frame of `noise_bank` (unit normals [K, H, W, 3], drawn once) times a
  random std per frame: drawing fresh normals for every pixel took a third of the step on CPU.
  """
  k_sigma, k_sharp, k_std, k_pick = jax.random.split(key, 4)
  n = x.shape[0]
  sigma = jax.random.uniform(k_sigma, (n,), maxval=1.2)
  sigma = jnp.where(jax.random.bernoulli(k_sharp, 0.5, (n,)), 0.0, sigma)
  taps = jnp.arange(-2, 3, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma[:, None], 1e-3)) ** 2)
  kernel = kernel / kernel.sum(axis=1, keepdims=True)  # [n, 5]; sigma 0 gives a delta
  for axis in (1, 2):  # separable: along H, then along W, edges repeated
    pad = [(0, 0)] * 4
    pad[axis] = (2, 2)
    padded = jnp.pad(x, pad, mode="edge")
    x = sum(kernel[:, i, None, None, None]
            * jax.lax.slice_in_dim(padded, i, i + x.shape[axis], axis=axis) for i in range(5))
  std = jax.random.uniform(k_std, (n, 1, 1, 1), maxval=0.04)
  noise = noise_bank[jax.random.randint(k_pick, (n,), 0, noise_bank.shape[0])]
  return x + std * noise


def train_probe(seed: int = 0, height: int = 64, width: int = 56, steps: int = 1000, *,
                batch_size: int = 64, learning_rate: float = 4e-3, num_random: int = 8000,
                num_clips: int = 64, noise_frames: int = 512,
                log: Callable[[str], None] | None = None) -> Probe:
  """Trains a probe (adam, warmup-cosine, LOSS_WEIGHTS) on `num_random` random-truth frames plus
  `num_clips` 32-frame clips, all rendered at height x width, augmented with blur and noise
  (`noise_frames` fields of unit normals). Deterministic for a seed on one machine."""
  start = time.time()
  frames, truth, episodes = _training_set(seed, num_random, num_clips, height, width)
  if log:
    log(f"probe: rendered {len(frames)} training frames in {time.time() - start:.1f}s")
  model = ProbeNet()
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, height, width, 3)))["params"]
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=min(50, steps // 10 + 1), decay_steps=max(steps, 2))
  tx = optax.adam(schedule)
  opt_state = tx.init(params)

  noise_bank = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 2),
                                 (noise_frames, height, width, 3))

  # Full XLA optimisation even where a test session lowers it to save compile time: this step
  # runs 1000 times, so its run time, not its compile time, is what counts. On CPU, also the
  # dVAE's options (Eigen's convolution kernels; 0.8x the step time) and XLA's default fusion
  # emitters, which the tests turn off (train_probe: 51 s with them, 56 s without).
  options = {**OPTIMISED, **(compile_options.dvae() or {}),
             **(compile_options.for_cpu({"xla_cpu_use_fusion_emitters": True}) or {})}
  # The augmentation is its own jit: inside the step XLA fused it into each consumer of the
  # augmented frames, recomputing it (1.2 ms alone, ~10 ms of a 35 ms step fused).
  augment = jax.jit(lambda key, frames, noise_bank: _augment(key, _to_float(frames), noise_bank),
                    compiler_options=options)

  @functools.partial(jax.jit, compiler_options=options)
  def train_step(params, opt_state, x, truth, episodes):

    def loss_fn(p):
      pred, logits = model.apply({"params": p}, x)
      mse = jnp.mean(LOSS_WEIGHTS * (pred - _scale_truth(truth)) ** 2)
      xent = optax.softmax_cross_entropy_with_integer_labels(logits, episodes).mean()
      return mse + 0.1 * xent, (mse, xent)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  rng = np.random.default_rng([_TRAIN_STREAM, seed, 1])
  aug_key = jax.random.fold_in(jax.random.key(seed), 1)
  for step in range(steps):
    idx = rng.integers(0, len(frames), batch_size)
    key = jax.random.fold_in(aug_key, step)
    x = augment(key, frames[idx], noise_bank)
    params, opt_state, loss, (mse, xent) = train_step(params, opt_state, x, truth[idx],
                                                      episodes[idx])
    if log and (step % 250 == 0 or step == steps - 1):
      log(f"probe step {step}: loss {float(loss):.4f} (mse {float(mse):.4f}, "
          f"episode xent {float(xent):.4f}) at {time.time() - start:.1f}s")
  return Probe(jax.device_get(params), height, width)


# ----------------------------------------------------------------------------------------------
# Reading frames


@functools.partial(jax.jit, compiler_options=OPTIMISED)
def _predict(params, frames):
  truth, logits = ProbeNet().apply({"params": params}, _to_float(frames))
  return _unscale_truth(truth), jax.nn.softmax(logits)


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  # Antialiased bilinear; rounding back to uint8 keeps the input the probe was trained on.
  out = jax.image.resize(frames.astype(np.float32), (len(frames), height, width, 3), "linear")
  return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def probe_predict(probe: Probe, frames: np.ndarray, *, batch_size: int = 256) -> dict:
  """Reads truth from frames uint8 [N, H, W, 3] (any H x W: resized to the probe's size).

  Returns float32 arrays: one per TRUTH_KEYS key [N], `episode_probs` [N, E], and int32 `episode`
  [N] (the most probable episode).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
  num = len(frames)
  truth = np.zeros((num, len(TRUTH_KEYS)), np.float32)
  probs = np.zeros((num, synthetic.NUM_EPISODES), np.float32)
  for i in range(0, num, batch_size):
    batch = frames[i:i + batch_size]
    if batch.shape[1:3] != (probe.height, probe.width):
      batch = _resize(batch, probe.height, probe.width)
    size = len(batch)
    # Pad the last batch so every call has one shape (one compilation).
    batch = np.pad(batch, ((0, batch_size - size), (0, 0), (0, 0), (0, 0)))
    t, p = _predict(probe.params, batch)
    truth[i:i + size], probs[i:i + size] = np.asarray(t)[:size], np.asarray(p)[:size]
  out = {key: truth[:, i] for i, key in enumerate(TRUTH_KEYS)}
  out["episode_probs"] = probs
  out["episode"] = probs.argmax(axis=-1).astype(np.int32)
  return out


# ----------------------------------------------------------------------------------------------
# Trust


def probe_quality(probe: Probe, *, seed: int = 0, num_frames: int = 1024,
                  height: int | None = None, width: int | None = None) -> dict:
  """Pearson r per truth key and episode accuracy on held-out random-truth frames.

  Frames are rendered at height x width (default: the probe's own size). Returns
  {'r': {key: r}, 'episode_accuracy': float, 'num_frames': int}.
  """
  frames, truth, episodes = heldout_frames(
      seed, num_frames, height or probe.height, width or probe.width)
  readings = probe_predict(probe, frames)
  return {
      "r": {key: pearson(readings[key], truth[:, i]) for i, key in enumerate(TRUTH_KEYS)},
      "episode_accuracy": float(np.mean(readings["episode"] == episodes)),
      "num_frames": num_frames,
  }


def require_trusted(probe: Probe, *, min_r: float = MIN_R,
                    min_episode_accuracy: float = MIN_EPISODE_ACCURACY,
                    keys: tuple[str, ...] = GATED_KEYS, **quality_kwargs) -> dict:
  """Returns `probe_quality(probe, **quality_kwargs)`, or raises UntrustedProbeError naming every
  key whose r (or the episode accuracy) is below its bar (NaN r counts as below)."""
  quality = probe_quality(probe, **quality_kwargs)
  failures = [f"{key} r={quality['r'][key]:.3f}" for key in keys
              if not quality["r"][key] >= min_r]
  if not quality["episode_accuracy"] >= min_episode_accuracy:
    failures.append(f"episode accuracy={quality['episode_accuracy']:.3f}")
  if failures:
    raise UntrustedProbeError(
        f"probe untrusted: {', '.join(failures)} on {quality['num_frames']} held-out frames "
        f"(needs r >= {min_r} and episode accuracy >= {min_episode_accuracy}); train it longer")
  return quality


# ----------------------------------------------------------------------------------------------
# Save and load


def save_probe(probe: Probe, path: str) -> None:
  """Writes the probe to one .npz file, atomically (a temporary file, then a rename)."""
  arrays = {"/".join(k): np.asarray(v)
            for k, v in traverse_util.flatten_dict(probe.params).items()}
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp.npz"
  with tmp.open("wb") as f:
    np.savez(f, **arrays, _height=probe.height, _width=probe.width)
  tmp.replace(path)


def load_probe(path: str) -> Probe:
  """Reads a probe written by `save_probe`."""
  with epath.Path(path).open("rb") as f, np.load(f) as data:
    params = traverse_util.unflatten_dict(
        {tuple(k.split("/")): data[k] for k in data.files if not k.startswith("_")})
    return Probe(params, int(data["_height"]), int(data["_width"]))
