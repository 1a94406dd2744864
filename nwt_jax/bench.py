"""Benchmarks: one JSON line per run, optionally with a PyTorch peer side by side.

    python -m nwt_jax.bench --what=dvae_step --config=configs/dvae.py:tiny
    python -m nwt_jax.bench --what=prior_step --config=configs/prior.py:tiny,far \\
        --dvae_config=configs/dvae.py:tiny --peer=torch
    python -m nwt_jax.bench --what=generate --config=configs/prior.py:tiny,far \\
        --dvae_config=configs/dvae.py:tiny --audio_seconds=30

Run from the root of a clone: the workloads live in its top-level `benchmarks/` folder, which is
not installed with the package. `dvae_step` and `prior_step` time a train step on synthetic
batches (`benchmarks.workloads`, `benchmarks.steps`; `--peer=torch` times the PyTorch peer of
`benchmarks.torch_peer` beside it, torch imported only then); `generate` times the decode loop
of `nwt_jax.generate` on random-init models and synthetic audio (`benchmarks.generation`).
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from nwt_jax import cli
from nwt_jax import errors

FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "dvae_step", ["dvae_step", "prior_step", "generate"], "What to time.")
config_flags.DEFINE_config_file("config", None, "dVAE config (dvae_step) or prior config.",
                                lock_config=False)
config_flags.DEFINE_config_file(
    "dvae_config", "configs/dvae.py:tiny",
    "dVAE config giving the prior's code grid (prior_step, generate) and the decoder (generate).",
    lock_config=False)
flags.DEFINE_integer("steps", 50, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_enum("peer", "", ["", "torch"], "Also time a PyTorch peer of the same step.")
flags.DEFINE_enum("peer_compile", "auto", ["auto", "on", "off"],
                  "torch.compile the peer: on, off, or auto (try it, keep the faster of the two).")
flags.DEFINE_integer("block", 10, "Steps per block when JAX and the peer alternate.")
flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the timed steps here.")
flags.DEFINE_float("audio_seconds", 30.0, "generate: seconds of audio to decode.")
flags.DEFINE_integer("overlap_frames", -1, "generate: prompt frames repeated from the last "
                     "window (-1: the generator's default, a quarter of the window).")
flags.DEFINE_boolean("compile_check", True, "generate: compile seconds for 30 s vs 600 s audio.")
flags.DEFINE_integer("bank_frames", 256, "generate: frames of the random frame bank a FAR "
                     "prior's first frame is picked from (--opening=bank; 0: none, drawn).")
cli.define_sampling_flags()


def _config_name() -> str:
  """The --config and --dvae_config arguments as given (file:preset and overrides)."""
  return " ".join(a for a in sys.argv[1:] if a.startswith(("--config", "--dvae_config")))


def _runner():
  """benchmarks.run, or a UserError outside a clone's root (benchmarks/ is not installed)."""
  try:
    from benchmarks import run  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name not in ("benchmarks", "benchmarks.run"):
      raise
    raise errors.MissingInput(
        "the benchmarks/ folder is not importable: run `python -m nwt_jax.bench` from the root "
        "of a clone of the repository (it is not installed with the package)") from None
  return run


def main() -> None:
  cli.require("config")
  options, opening = cli.sampling_settings()
  record = _runner().benchmark(
      FLAGS.what, FLAGS.config, FLAGS.dvae_config, config_name=_config_name(),
      steps=FLAGS.steps, warmup=FLAGS.warmup, peer=FLAGS.peer, peer_compile=FLAGS.peer_compile,
      block=FLAGS.block, profile_dir=FLAGS.profile_dir, audio_seconds=FLAGS.audio_seconds,
      overlap=None if FLAGS.overlap_frames < 0 else FLAGS.overlap_frames,
      compile_check=FLAGS.compile_check, options=options, opening=opening,
      bank_frames=FLAGS.bank_frames, seed=FLAGS.seed)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  cli.run(main)
