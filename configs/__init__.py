"""ml_collections configs: `--config=configs/dvae.py:tiny`, `--config=configs/prior.py:tiny,far`."""
