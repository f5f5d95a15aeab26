from .build import ConfigKeyError, check_eps_units, merge_from_file, merge_from_list, peek_trainer_name, setup_cfg
from .defaults import get_cfg_default

__all__ = [
    "ConfigKeyError",
    "check_eps_units",
    "get_cfg_default",
    "merge_from_file",
    "merge_from_list",
    "peek_trainer_name",
    "setup_cfg",
]
