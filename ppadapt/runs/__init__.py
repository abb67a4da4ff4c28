"""What a run leaves on disk, each file with one owner: checkpoints and safe loading
(:mod:`.checkpoint`), adapter files (:mod:`.adapter_file`), pretrained backbones
(:mod:`.pretrained`), and rebuilding a trained model from its run folder (:mod:`.loading`).

Nothing here imports the training stack, so prediction and export stay light."""
