"""The demo's stages on small sizes (the full `make demo` run is the slow end-to-end test)."""

import numpy as np

from nwt_jax.evaluation import demo
from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic


def test_dataset_stage_builds_once_and_summarises(tmp_path):
  kw = dict(num_train_clips=3, num_validation_clips=2, num_frames=8)
  summary = demo.build_dataset(tmp_path, **kw)
  assert summary["built_now"] and summary["splits"] == {"train": 3, "validation": 2}
  assert summary["clip_shape"] == [8, 64, 56, 3] and summary["episodes"] == synthetic.NUM_EPISODES
  assert summary["audio_sample_rate"] == 24000 and summary["bytes"] > 0
  again = demo.build_dataset(tmp_path, **kw)
  assert not again["built_now"] and again["splits"] == summary["splits"]
  # What was written is the synthetic world's clip 1 of the validation split.
  example = demo.dataset_builder(tmp_path, **kw).as_data_source("validation")[1]
  expected = synthetic.make_clip(input_pipeline.synthetic_clip_seed("validation", 1),
                                 num_frames=8)
  np.testing.assert_array_equal(example["video"], expected["video"])
