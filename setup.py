"""Install the core package ``ampt``.

Only ``ampt`` is installed. ``trainers/`` and ``datasets/`` stay plug-in
folders of the repository (loaded by ``ampt.plugins``), so no top-level
``datasets`` package can shadow Hugging Face's ``datasets``.
"""
from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="ampt-toolkit",
    version="0.1.0",
    description="Adversarial (mixture) prompt tuning for CLIP on a Dassl-compatible engine",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ampt", "ampt.*"]),
    package_data={"ampt.report": ["schemas/*.json"]},  # the RobustBench export's JSON Schema
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "openai-clip>=1.0",
        "setuptools<81",  # the clip package imports pkg_resources, removed in setuptools 81
        "yacs>=0.1.8",
        "tabulate>=0.9",
        "tqdm>=4.60",
        "scipy>=1.9",  # .mat annotations (StanfordCars, OxfordFlowers)
        "scikit-learn>=1.2",  # the embedded Digits demo data
        "safetensors>=0.4",  # exported models (python -m ampt.export, ampt.load_classifier)
        "pyautoattack>=0.2",  # AutoAttack (fra31's code)
    ],
    extras_require={
        "tensorboard": ["tensorboard>=2.10"],
        "openclip": ["open_clip_torch>=2.24"],  # open_clip backbones (LAION, TeCoA/FARE checkpoints)
        "slurm": ["submitit>=1.5"],  # sweeps on a SLURM cluster
        "report": ["matplotlib>=3.7", "jsonschema>=4.18"],  # the report's plots; RobustBench cards validated
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],  # python -m ampt.export --onnx
        "app": ["gradio>=4.0"],  # python -m ampt.app
        # the exported-model tests: ONNX (onnx, onnxruntime), the page in a headless browser (gradio, selenium)
        "test": ["pytest>=7", "pytest-xdist>=3.5", "torchattacks>=3.5", "tensorboard>=2.10", "submitit>=1.5", "matplotlib>=3.7", "jsonschema>=4.18",
                 "onnx>=1.15", "onnxruntime>=1.17", "gradio>=4.0", "selenium>=4.10"],
    },
)
