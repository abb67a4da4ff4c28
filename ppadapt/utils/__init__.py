"""Process-level helpers with no knowledge of models or training: CPU runtime settings
(:mod:`.runtime`), file-system checks (:mod:`.files`) and byte sizes for people (:mod:`.formatting`)."""
