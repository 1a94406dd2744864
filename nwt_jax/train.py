"""Entry point for both training stages; the work happens in the trainer `config.model` names.

    python -m nwt_jax.train --config=configs/dvae.py:tiny --workdir=runs/dvae
    python -m nwt_jax.train --config=configs/prior.py:tiny,far --workdir=runs/prior \\
        --config.optim.lr=3e-4          # any config field can be overridden like this

Before anything is compiled or written, the config is checked against its data and workdir
(`nwt_jax.training.checks`: frame size, episodes, audio rate, clip length); the episode names of
the data (a `folder` dataset's folders) go into WORKDIR/episodes.json. Rerunning the same command
resumes from the workdir's latest checkpoint; SIGTERM checkpoints and exits 0. Multi-process runs
(`NWT_DISTRIBUTED=1`, multi-task SLURM or Open MPI, multi-host TPU VMs, or explicit
`--coordinator_address/--num_processes/--process_id`) call `jax.distributed.initialize` first.
"""

import importlib
import sys

from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from nwt_jax import cli
from nwt_jax import errors
from nwt_jax.data import episodes
from nwt_jax.runtime import distributed
from nwt_jax.training import checks
from nwt_jax.training import workdir

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
TRAINERS = {"dvae": "nwt_jax.training.dvae", "prior": "nwt_jax.training.prior"}


class UnknownModelError(errors.UserError, ValueError):
  """`config.model` names no trainer."""


def trainer(model: str):
  """The trainer module for `config.model`."""
  if model not in TRAINERS:
    raise UnknownModelError(f"config.model={model!r} is not a model this entry point trains; "
                            f"choose one of {sorted(TRAINERS)}.")
  return importlib.import_module(TRAINERS[model])


def _root_cause(e: BaseException) -> BaseException:
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return e


def _config_error(argv: list[str], e: BaseException) -> str:
  """One line for a config file, preset or override that config_flags could not load (it
  reports them as tracebacks)."""
  config_arg = next((a for a in reversed(argv) if a.startswith("--config=")), "--config=")
  config_file = config_arg.partition("=")[2].partition(":")[0]
  if not epath.Path(config_file).is_file():
    return f"{config_arg}: no such config file {config_file!r}"
  if isinstance(e, (AttributeError, KeyError)):  # an override names a field the config lacks
    config = config_flags_impl.ConfigFileFlagParser("config").parse(config_arg.partition("=")[2])
    for arg in argv:
      if arg.startswith("--config."):
        field = arg[len("--config."):].partition("=")[0]
        node, walked = config, []
        for name in field.split("."):
          if not hasattr(node, "keys") or name not in node:
            where = ".".join(walked) or "the config"
            known = (", ".join(sorted(node.keys())) if hasattr(node, "keys")
                     else "none, it is a value")
            return f"{arg}: the config has no field {field} (fields of {where}: {known})"
          walked.append(name)
          node = node[name]
  message = str(_root_cause(e)).strip().splitlines()
  return f"{config_arg}: {' '.join(line.strip() for line in message)}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config file, preset or override that does not load reported
  as one `error:` line and exit code 1 instead of config_flags' traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.get("model")  # config_flags defers a missing file's error to the first read
  except flags.Error as e:
    if not str(e).startswith("flag --config="):  # not the config file: absl's own line
      print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
      raise SystemExit(1) from None
    raise SystemExit(f"error: {_config_error(argv, e)}") from None
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    raise SystemExit(f"error: {_config_error(argv, e)}") from None
  return rest


def main() -> None:
  names = checks.check(FLAGS.config, FLAGS.workdir)  # reads only: nothing is written yet
  if "tensorflow" in sys.modules:  # Keep TF (data pipeline) off the accelerators JAX uses.
    sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info("JAX process %d / %d; %d local devices of %d: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  module = trainer(FLAGS.config.model)
  created = workdir.prepare(FLAGS.workdir)
  if names is not None and jax.process_index() == 0:
    episodes.save(FLAGS.workdir, names)
  try:
    module.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError:
    # Bad input (a wrong model name or path, a config that doesn't fit the devices or the
    # workdir's checkpoint, a diverged run): a workdir this run created is removed unless it
    # holds a checkpoint; cli.run prints the message.
    if created:
      workdir.remove_if_no_checkpoint(FLAGS.workdir)
    raise


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
