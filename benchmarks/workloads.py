"""The train steps the benchmark times, compiled ahead of time on synthetic batches.

`dvae_workload` times `training.dvae.setup(config).train_step` with the adversarial branch on
(`loss.adv_start_step` is set to 0 so both networks update, the step the run spends most of its
time in); `prior_workload` times `training.prior.setup(config, manifest).train_step`, with the
code grid, heads and codebook of the manifest taken from a dVAE config (what `nwt_jax.tokenize`
would write). Batches are synthetic in-memory arrays of the real shapes and dtypes. Each
workload can also build its PyTorch peer (`benchmarks.torch_peer`, weights copied from the JAX
initial state); torch is imported only then.
"""

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import measure
from nwt_jax.data import constants
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import prior as train_prior
from nwt_jax.training import sharding

PyTree = Any


@dataclasses.dataclass
class Workload:
  """A compiled train step with its state and a synthetic batch, ready to time."""
  name: str  # 'dvae_step' | 'prior_step'
  config: ml_collections.ConfigDict
  compiled: Callable  # (state, batch) -> (state, metrics); donates state
  state: PyTree
  batch: dict[str, jax.Array]
  host_batch: dict[str, np.ndarray]
  units_per_step: int  # frames (dVAE) or codes (prior) per step
  unit: str
  compile_s: float
  num_params: int
  make_peer: Callable[[bool], tuple[Callable, dict]]  # compile? -> (peer step, peer batch)


def dvae_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random frames and episode ids shaped like the dVAE input pipeline's batches."""
  d = config.data
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (d.batch_size, d.frames_per_example, d.height, d.width,
                                         3), dtype=np.uint8),
          "episode": rng.integers(0, config.dvae.num_episodes, (d.batch_size,), dtype=np.int32)}


def bench_dvae_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the dVAE benchmark times: the adversarial step (both networks update)."""
  config = copy.deepcopy(config)
  config.loss.adv_start_step = 0
  return config


def _torch_batch(host_batch: dict[str, np.ndarray]) -> dict:
  """The host batch as torch tensors (integers as int64, torch's index type)."""
  import torch  # pylint: disable=g-import-not-at-top
  return {k: torch.from_numpy(v.astype(np.int64) if k in ("codes", "episode") else v.copy())
          for k, v in host_batch.items()}


def _compiled(s, host_batch: dict[str, np.ndarray]) -> tuple[Any, float, PyTree, dict, PyTree]:
  """A trainer's setup `s` on `host_batch`: (compiled train step, its compile seconds, the
  initial state, the device batch, the initial params on the host for the peer: the state is
  donated)."""
  batch = sharding.put_batch(host_batch, s.mesh)
  start = time.perf_counter()
  compiled = s.lower_train_step(batch).compile()
  compile_s = time.perf_counter() - start
  state = s.init_state()
  return compiled, compile_s, state, batch, jax.device_get(state.params)


def dvae_workload(config: ml_collections.ConfigDict, devices=None) -> Workload:
  """`train_dvae.setup(config)`'s train step on a synthetic batch, compiled ahead of time."""
  config = bench_dvae_config(config)
  host_batch = dvae_batch(config)
  compiled, compile_s, state, batch, params = _compiled(train_dvae.setup(config, devices),
                                                        host_batch)
  d = config.data

  def make_peer(compile_: bool):
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
    gen, disc = torch_peer.build_dvae(config)
    torch_peer.load_flax_params(gen, params["generator"])
    torch_peer.load_flax_params(disc, params["discriminator"])
    return (torch_peer.DVAETrainStep(config, gen, disc, compile=compile_),
            _torch_batch(host_batch))

  return Workload("dvae_step", config, compiled, state, batch, host_batch,
                  d.batch_size * d.frames_per_example, "frames", compile_s,
                  measure.count_params(params), make_peer)


def manifest_from_dvae(dvae_config: ml_collections.ConfigDict, frames: int) -> dict:
  """The token manifest a dVAE of `dvae_config` would give the prior (grid, heads, codes)."""
  factor = train_dvae.make_models(dvae_config)[0].downsample_factor
  grid = (dvae_config.data.height // factor, dvae_config.data.width // factor)
  return {"grid": list(grid), "code_heads": dvae_config.dvae.heads,
          "num_codes": dvae_config.dvae.num_codes,
          "num_episodes": dvae_config.dvae.num_episodes, "mel_bins": constants.N_MELS,
          "num_frames": frames}


def prior_batch(config: ml_collections.ConfigDict, manifest: dict,
                seed: int = 0) -> dict[str, np.ndarray]:
  """Random codes, log-mel and episode ids shaped like the token pipeline's batches."""
  b, t = config.data.batch_size, train_prior.window_frames(config, manifest)
  gh, gw = manifest["grid"]
  rng = np.random.default_rng(seed)
  return {"codes": rng.integers(0, manifest["num_codes"], (b, t, gh, gw, manifest["code_heads"]),
                                dtype=np.int32),
          "mel": synthetic_mel(t, rng, (b,)),
          "episode": rng.integers(0, manifest["num_episodes"], (b,), dtype=np.int32)}


def synthetic_mel(num_frames: int, rng: np.random.Generator | int = 0,
                  batch: tuple[int, ...] = ()) -> np.ndarray:
  """Random log-mel [*batch, 4N, 80] in the range of real speech (the cost ignores its values)."""
  rng = np.random.default_rng(rng)
  shape = batch + (constants.MEL_PER_FRAME * num_frames, constants.N_MELS)
  return rng.normal(-6.0, 3.0, shape).astype(np.float32)


def prior_workload(config: ml_collections.ConfigDict,
                   dvae_config: ml_collections.ConfigDict, devices=None) -> Workload:
  """`train_prior.setup(config, manifest)`'s train step on a synthetic batch, compiled ahead."""
  manifest = manifest_from_dvae(dvae_config, config.data.frames_per_example)
  host_batch = prior_batch(config, manifest)
  compiled, compile_s, state, batch, params = _compiled(
      train_prior.setup(config, manifest, devices), host_batch)

  def make_peer(compile_: bool):
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
    model = torch_peer.build_prior(config, manifest)
    torch_peer.load_flax_params(model, params)
    return torch_peer.PriorTrainStep(config, model, compile=compile_), _torch_batch(host_batch)

  return Workload("prior_step", config, compiled, state, batch, host_batch,
                  int(host_batch["codes"].size), "tokens", compile_s,
                  measure.count_params(params), make_peer)
