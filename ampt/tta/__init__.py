"""Test-time prompt tuning on top of any trained run (``evaluate.py --test-time tapt|rtpt``).

- :mod:`.base`: the :class:`TestTimeMethod` interface, ``TTA_REGISTRY``, settings;
- :mod:`.adapted`: :class:`TestTimeAdapted`, the per-image adapt-predict-reset loop (unrolled under attack);
- :mod:`.views`, :mod:`.adamw`, :mod:`.entropy`, :mod:`.token_stats`: its pieces;
- one file per method: :mod:`.tapt`, :mod:`.rtpt`.
"""
from .base import THREATS, TTA_REGISTRY, TestTimeContext, TestTimeMethod, parse_settings, register_test_time, settings_text
from .adapted import TestTimeAdapted, quantize_8bit
from . import rtpt, tapt  # noqa: F401  (each file registers its method)

__all__ = ["THREATS", "TTA_REGISTRY", "TestTimeAdapted", "TestTimeContext", "TestTimeMethod", "parse_settings",
           "quantize_8bit", "register_test_time", "settings_text"]
