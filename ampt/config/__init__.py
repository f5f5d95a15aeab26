from .defaults import get_cfg_default

__all__ = ["get_cfg_default"]
