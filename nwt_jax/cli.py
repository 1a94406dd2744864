"""What every command line shares: one runner, and the flags that several commands take.

Each CLI module (`nwt_jax.train`, `tokenize`, `generate`, `evaluate`, `demo`, `footage`, `bench`)
defines its own flags at import, parses nothing else and calls one library function through `run`,
which turns a `nwt_jax.errors.UserError` into one `error: ...` line and exit code 1 (no traceback;
any other exception is a bug and keeps its traceback). Orbax's INFO lines (a dozen per checkpoint)
are hidden unless `--verbosity=1` (absl's own flag) asks for them.
"""

from collections.abc import Callable
import logging as py_logging
import sys

from absl import app
from absl import flags
from absl import logging

from nwt_jax import errors
from nwt_jax.inference import sampling
from nwt_jax.inference import settings
from nwt_jax.runtime import host_malloc

FLAGS = flags.FLAGS


def define_workdir_flags() -> None:
  """--dvae_workdir and --prior_workdir: the two trained models."""
  flags.DEFINE_string("dvae_workdir", None, "Workdir of the trained dVAE.")
  flags.DEFINE_string("prior_workdir", None, "Workdir of the prior trained on that dVAE's codes.")


def define_sampling_flags(flag_values=FLAGS, **defaults) -> None:
  """The sampling flags of generate, evaluate and the demo, defined once (`defaults` overrides a
  default by flag name, e.g. the demo's)."""
  d = dict(temperature=1.0, top_k=0, top_p=1.0, audio_guidance=1.0, change_threshold=0.0,
           opening="bank", seed=0)
  unknown = set(defaults) - set(d)
  if unknown:
    raise ValueError(f"no sampling flag {sorted(unknown)}")
  d.update(defaults)
  flags.DEFINE_float("temperature", d["temperature"], "Sampling temperature (0: greedy).", flag_values=flag_values)
  flags.DEFINE_integer("top_k", d["top_k"], "Sample among the k most likely codes (0: all).", flag_values=flag_values)
  flags.DEFINE_float("top_p", d["top_p"], "Nucleus sampling mass (1: all).", flag_values=flag_values)
  flags.DEFINE_float("audio_guidance", d["audio_guidance"],
                     "Classifier-free audio guidance weight (1: off; > 1 needs a prior trained "
                     "with prior.audio_dropout > 0).", flag_values=flag_values)
  flags.DEFINE_float("change_threshold", d["change_threshold"],
                     "FAR: a code keeps the previous frame's unless P(change) is above this "
                     "(0: plain sampling).", flag_values=flag_values)
  flags.DEFINE_enum("opening", d["opening"], list(sampling.OPENINGS),
                    "A FAR prior's first frame: the training frame it finds most likely there "
                    "(bank; drawn if the prior's workdir has no frame bank) or drawn (sample).", flag_values=flag_values)
  flags.DEFINE_integer("seed", d["seed"], "Sampling seed (and of --style=random).", flag_values=flag_values)


def sampling_settings(prior_workdir: str | None = None, *, flag_values=FLAGS
                      ) -> tuple[sampling.SamplingOptions, str]:
  """(SamplingOptions, opening) of the sampling flags (`define_sampling_flags`). A flag not given
  on the command line takes the value stored with the prior (`nwt_jax.inference.settings`), if
  any, else its default; the line logged says which values came from where."""
  stored = settings.load(prior_workdir) if prior_workdir else {}
  values, sources = {}, {}
  for key in settings.KEYS:
    flag = flag_values[key]
    if not flag.present and key in stored:
      values[key], sources[key] = stored[key], "stored"
    else:
      values[key], sources[key] = flag.value, "flag" if flag.present else "default"
  logging.info("sampling: %s", ", ".join(
      f"{key} {values[key]} ({sources[key]})" for key in settings.KEYS))
  opening = values.pop("opening")
  try:
    options = sampling.SamplingOptions(**values)
  except ValueError as e:
    raise errors.InvalidInput(str(e)) from None
  return options, opening


def require(*names: str) -> None:
  """A UserError naming every flag of `names` that was not given."""
  missing = [f"--{name}" for name in names if not FLAGS[name].value]
  if missing:
    raise errors.InvalidInput(f"{', '.join(missing)} must be given")


class _QuietOrbax(py_logging.Filter):
  """Orbax logs a dozen INFO lines per save and restore; keep its warnings and our lines."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
  """Hides orbax's INFO lines unless --verbosity >= 1."""
  if logging.get_verbosity() < logging.DEBUG:
    logging.get_absl_handler().addFilter(_QuietOrbax())


def run(main: Callable[[], None], *, flags_parser=None,
        user_errors: tuple[type[BaseException], ...] = (errors.UserError,)) -> None:
  """absl's app.run of `main()` (no positional arguments), with the CPU allocator tuned, orbax
  quiet and any of `user_errors` printed as one `error:` line with exit code 1."""

  def wrapped(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_malloc.tune_for_cpu()
    quiet_orbax()
    try:
      main()
    except user_errors as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  kwargs = {"flags_parser": flags_parser} if flags_parser else {}
  app.run(wrapped, **kwargs)
