"""What a run leaves on disk, each file with one owner: checkpoints, crash-safe saving and
safe loading (:mod:`.checkpoint`, reading Paddle's pickles without running code through
:mod:`.paddle_pickle`), the run record ``run.json`` (:mod:`.record`), the resume
checkpoint file (:mod:`.resume_file`), adapter files (:mod:`.adapter_file`), pretrained
backbones (:mod:`.pretrained`), and rebuilding a trained model from its run folder
(:mod:`.loading`).

Nothing here imports the training stack, so prediction and export stay light."""
