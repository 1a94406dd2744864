import pytest

from configs import common


def test_parse_arg_picks_one_word_per_group_with_defaults():
  cfg = common.parse_arg("mar", size=("tiny", "base"), decoder=("far", "mar"))
  assert (cfg.size, cfg.decoder) == ("tiny", "mar")
  cfg = common.parse_arg(" base , far ", size=("tiny", "base"), decoder=("far", "mar"))
  assert (cfg.size, cfg.decoder) == ("base", "far")
  assert common.parse_arg("", size=("tiny", "base")).size == "tiny"


def test_parse_arg_rejects_unknown_and_conflicting_words():
  with pytest.raises(ValueError, match="Unknown config preset 'huge'.*size: tiny\\|base"):
    common.parse_arg("huge", size=("tiny", "base"))
  with pytest.raises(ValueError, match="both set 'size'"):
    common.parse_arg("tiny,base", size=("tiny", "base"))
