"""python -m visualize: pictures of what the attention blocks attend to."""
