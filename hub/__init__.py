"""Publish training runs as Hugging Face Hub repositories: `python -m hub export` and `python -m hub push`."""
