"""Dataset plug-ins: one file per dataset, registered with ``@DATASET_REGISTRY.register()``."""
