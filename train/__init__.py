"""Training and evaluation for timm-spa models: `python -m train` and `python -m train.validate`."""
