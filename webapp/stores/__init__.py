"""What the server keeps on disk: durable files, the model registry, datasets, settings."""
