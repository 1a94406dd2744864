"""Sampling settings stored with a prior: used where a flag is absent, overridden where given."""

from absl import flags
import pytest

from nwt_jax import cli
from nwt_jax import errors
from nwt_jax.inference import sampling
from nwt_jax.inference import settings


def _flags(argv):
  values = flags.FlagValues()
  cli.define_sampling_flags(flag_values=values)
  values(["prog"] + argv)
  return values


def test_stored_settings_fill_the_flags_not_given(tmp_path):
  stored = sampling.SamplingOptions(temperature=0.7, audio_guidance=3.0, change_threshold=0.2)
  settings.save(str(tmp_path), stored, opening="sample")
  options, opening = cli.sampling_settings(str(tmp_path), flag_values=_flags([]))
  assert options == stored and opening == "sample"
  # A flag on the command line wins over the stored value; the others still come from the file.
  options, opening = cli.sampling_settings(
      str(tmp_path), flag_values=_flags(["--temperature=0.3", "--opening=bank"]))
  assert options == sampling.SamplingOptions(0.3, 0, 1.0, 3.0, 0.2) and opening == "bank"


def test_without_stored_settings_the_flag_defaults_apply(tmp_path):
  options, opening = cli.sampling_settings(str(tmp_path), flag_values=_flags(["--top_k=5"]))
  assert options == sampling.SamplingOptions(top_k=5) and opening == "bank"


def test_bad_stored_or_given_settings_are_errors(tmp_path):
  (tmp_path / settings.FILENAME).write_text('{"temprature": 0.5}')
  with pytest.raises(ValueError, match="temprature"):
    settings.load(str(tmp_path))
  with pytest.raises(errors.UserError, match="top_p"):
    cli.sampling_settings(None, flag_values=_flags(["--top_p=0"]))
