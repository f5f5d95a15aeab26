"""Environment report logged at the start of a run (Dassl's ``collect_env_info``)."""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import List

import torch

_PACKAGES = ("torch", "torchvision", "numpy", "yacs", "openai-clip", "pyautoattack", "torchattacks")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_env_info() -> str:
    """A short multi-line summary: Python, platform, package versions, devices."""
    lines: List[str] = [
        f"Python: {sys.version.split()[0]}",
        f"Platform: {platform.platform()}",
    ]
    lines += [f"{name}: {_version(name)}" for name in _PACKAGES]
    lines.append(f"CPU threads (torch): {torch.get_num_threads()}")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"CUDA {torch.version.cuda}: {', '.join(names)}")
    else:
        lines.append("CUDA: not available")
    return "\n".join(lines)
