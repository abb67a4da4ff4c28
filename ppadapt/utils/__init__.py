"""Process-level helpers with no knowledge of models or training: CPU runtime settings."""
