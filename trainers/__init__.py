"""Trainer plug-ins: one file per method, registered with ``@TRAINER_REGISTRY.register()``."""
