"""Training a stage on ``paddle.Model``: the pipeline (:mod:`.engine`), its callbacks,
and resumable state (:mod:`.resume`)."""
