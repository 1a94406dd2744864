"""Entry point for both training stages; the work happens in the trainer `config.model` names.

    python -m nwt_jax.train --config=configs/dvae.py:tiny --workdir=runs/dvae
    python -m nwt_jax.train --config=configs/prior.py:tiny,far --workdir=runs/prior \\
        --config.optim.lr=3e-4          # any config field can be overridden like this

Rerunning the same command resumes from the workdir's latest checkpoint; SIGTERM checkpoints and
exits 0. Multi-process runs (`NWT_DISTRIBUTED=1`, multi-task SLURM or Open MPI, multi-host TPU
VMs, or explicit `--coordinator_address/--num_processes/--process_id`) call
`jax.distributed.initialize` first.
"""

import importlib
import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from nwt_jax import checkpoint
from nwt_jax import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/dvae.py:tiny.", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs the environment doesn't "
                    "describe (SLURM, Open MPI and TPU VMs are detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])

# config.model -> module with `train_and_evaluate(config, workdir)`, imported only when chosen.
TRAINERS = {"dvae": "nwt_jax.train_dvae", "prior": "nwt_jax.train_prior"}


class UnknownModelError(ValueError):
  """`config.model` names no trainer."""


def trainer(model: str):
  """The trainer module for `config.model`."""
  if model not in TRAINERS:
    raise UnknownModelError(f"config.model={model!r} is not a model this entry point trains; "
                            f"choose one of {sorted(TRAINERS)}.")
  return importlib.import_module(TRAINERS[model])


def _multiprocess_environment() -> bool:
  """True where the environment launched several processes that must form one JAX system
  (`NWT_DISTRIBUTED=1`, set by the scripts in launch/, forces it)."""
  env = os.environ
  return bool(env.get("NWT_DISTRIBUTED") == "1"
              or env.get("JAX_COORDINATOR_ADDRESS")
              or int(env.get("SLURM_NTASKS", "1")) > 1
              or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
              or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def _initialize_distributed() -> None:
  if FLAGS.coordinator_address or _multiprocess_environment():
    # CPU processes need gloo for cross-process collectives; other backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


class _QuietOrbax(py_logging.Filter):
  """Orbax logs a dozen INFO lines per save; keep its warnings and our progress lines."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if "tensorflow" in sys.modules:  # Keep TF (data pipeline) off the accelerators JAX uses.
    sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
  _initialize_distributed()
  logging.info("JAX process %d / %d; %d local devices of %d: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  try:
    trainer(FLAGS.config.model).train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (UnknownModelError, checkpoint.ConfigMismatchError, train_lib.NonFiniteError) as e:
    # A wrong model name, a config that doesn't fit the workdir's checkpoint, a diverged run:
    # the message says what to do; no traceback, exit code 1.
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
