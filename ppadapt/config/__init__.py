"""Experiment configuration: typed sections, YAML files, ``-o key=value`` overrides.

A config file describes one protocol (the model and the modules it carries, the
pretraining stage, the transfer stage and its method); ``train.py`` runs its
``pretrain`` section and ``transfer.py`` its ``transfer`` section, so both tools share
the model. Every key is checked: an unknown or mistyped key is an error that suggests
the closest valid one, never silently ignored.

* :mod:`.schema`: the sections (dataclasses) and typed values;
* :mod:`.loading`: YAML files, overrides, config dicts (run.json, checkpoints);
* :mod:`.validation`: ranges and the model's geometry;
* :mod:`.tuning`: the transfer method, the carried methods and their options;
* :mod:`.legacy`: the older config form, read as the current one with one note;
* :mod:`.flags`: the command-line flags and the keys they set.
"""
from .legacy import legacy_notes
from .loading import config_from_dict, dump_config, load_config, set_value
from .schema import (CONFIG_DIR, SCHEDULE_RULES, SCHEDULES, STAGES, Config, MethodSection, ModelSection,
                     PretrainConfig, StageConfig, TransferConfig, coerce, parse_scalar)
from .tuning import carried_config, method_config, set_backbone, transfer_method
from .validation import check_geometry, validate

_parse_scalar = parse_scalar  # the name the command lines imported

__all__ = ["CONFIG_DIR", "Config", "MethodSection", "ModelSection", "PretrainConfig", "SCHEDULE_RULES", "SCHEDULES",
           "STAGES", "StageConfig", "TransferConfig", "carried_config", "check_geometry", "coerce", "config_from_dict",
           "dump_config", "legacy_notes", "load_config", "method_config", "parse_scalar", "set_backbone",
           "set_value", "transfer_method", "validate"]
