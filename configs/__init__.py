"""ml_collections experiment configs (`--config=configs/<name>.py --config.key=value`)."""
