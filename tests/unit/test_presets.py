"""nwt_jax.presets: the one preset parser of configs/*.py, strict overrides, loading by path."""

import ast
import pathlib

import ml_collections
import pytest

from nwt_jax import presets

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_parse_picks_one_word_per_group_with_defaults():
  cfg = presets.parse("mar", size=("tiny", "base"), decoder=("far", "mar"))
  assert (cfg.size, cfg.decoder) == ("tiny", "mar")
  cfg = presets.parse(" base , far ", size=("tiny", "base"), decoder=("far", "mar"))
  assert (cfg.size, cfg.decoder) == ("base", "far")
  assert presets.parse("", size=("tiny", "base")).size == "tiny"
  assert presets.parse(None, size=("tiny", "base")).size == "tiny"


def test_parse_rejects_unknown_and_conflicting_words():
  with pytest.raises(ValueError, match="Unknown config preset 'huge'.*size: tiny\\|base"):
    presets.parse("huge", size=("tiny", "base"))
  with pytest.raises(ValueError, match="both set 'size'"):
    presets.parse("tiny,base", size=("tiny", "base"))


def test_override_sets_nested_fields_and_rejects_unknown_ones():
  config = ml_collections.ConfigDict(dict(dtype="float32", optim=dict(lr=1e-3, b1=0.9)))
  presets.override(config, {"dtype": "bfloat16", "optim": {"lr": 3e-4}})
  assert (config.dtype, config.optim.lr, config.optim.b1) == ("bfloat16", 3e-4, 0.9)
  with pytest.raises(ValueError, match=r"unknown field optim\.end_lr_ratio \(fields of optim: "
                     r"b1, lr\)"):
    presets.override(config, {"optim": {"end_lr_ratio": 0.1}})
  with pytest.raises(ValueError, match="unknown field train "):
    presets.override(config, {"train": {"num_steps": 1}})


@pytest.mark.parametrize("spec", ["configs/dvae.py:tiny", "configs/prior.py:tiny,mar",
                                  "configs/prior.py"])
def test_load_config_by_path_from_any_directory(spec, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # relative paths fall back to the checkout
  config = presets.load_config(spec)
  assert config.model == spec.split("/")[1].partition(".")[0]
  assert presets.load_config(str(REPO / spec)).to_dict() == config.to_dict()
  with pytest.raises(FileNotFoundError, match="no such config file 'configs/nope.py'"):
    presets.load_config("configs/nope.py:tiny")


def test_config_files_import_only_nwt_jax_and_share_the_vocabulary():
  assert CONFIGS and not (REPO / "configs" / "__init__.py").exists()
  for path in CONFIGS:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom):
        assert node.module.split(".")[0] in ("nwt_jax", "ml_collections"), (path, node.module)
      elif isinstance(node, ast.Import):
        assert all(a.name.split(".")[0] in ("nwt_jax", "ml_collections") for a in node.names)
  for spec in ("configs/dvae.py:tiny", "configs/prior.py:tiny"):
    optim = presets.load_config(spec).optim
    assert "end_lr_factor" in optim and "end_lr_ratio" not in optim, spec
  with pytest.raises(ValueError, match="Unknown config preset 'huge'"):
    presets.load_config("configs/dvae.py:huge")
