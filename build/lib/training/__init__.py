"""Training and evaluation that reproduce the paper's protocol and produce the checkpoint the service ships."""
