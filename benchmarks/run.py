"""One benchmark run -> its JSON record: what `python -m nwt_jax.bench` prints.

`dvae_step` and `prior_step` time a train step (`benchmarks.workloads`, `benchmarks.steps`),
`generate` the decode loop of `nwt_jax.generate` (`benchmarks.generation`).
"""

from typing import Any

from absl import logging
import ml_collections

from benchmarks import generation
from benchmarks import measure
from benchmarks import steps as step_bench
from benchmarks import workloads
from nwt_jax.inference import sampling

WHAT = ("dvae_step", "prior_step", "generate")


def benchmark(what: str, config: ml_collections.ConfigDict,
              dvae_config: ml_collections.ConfigDict, *, config_name: str = "",
              steps: int = 50, warmup: int = 3, peer: str = "", peer_compile: str = "auto",
              block: int = 10, profile_dir: str = "", audio_seconds: float = 30.0,
              overlap: int | None = None, compile_check: bool = True,
              options: sampling.SamplingOptions = sampling.SamplingOptions(),
              opening: str = "bank", bank_frames: int = generation.BANK_FRAMES,
              seed: int = 0) -> dict[str, Any]:
  """Times `what` of `config` (a dVAE config for dvae_step, else a prior config on the code grid
  of `dvae_config`) -> the JSON record. The steps' arguments are `steps` to `profile_dir`,
  generation's `audio_seconds` to `seed`."""
  peak = measure.device_peak_flops()  # before the first model: the CPU peak is measured
  if what == "generate":
    return generation.bench_generate(
        config, dvae_config, audio_seconds=audio_seconds, options=options, overlap=overlap,
        opening=opening, bank_frames=bank_frames, seed=seed, compile_check=compile_check,
        peak=peak, config_name=config_name)
  if what == "dvae_step":
    w = workloads.dvae_workload(config)
  elif what == "prior_step":
    w = workloads.prior_workload(config, dvae_config)
  else:
    raise ValueError(f"what must be one of {WHAT}, got {what!r}")
  logging.info("%s: %d parameters, compiled in %.1f s", w.name, w.num_params, w.compile_s)
  return step_bench.bench_step(w, steps=steps, warmup=warmup, peer=peer,
                               peer_compile=peer_compile, block=block, profile_dir=profile_dir,
                               peak=peak, config_name=config_name)
