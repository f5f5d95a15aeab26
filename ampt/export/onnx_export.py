"""``--onnx``: the test-time graph of a fixed-prompt or AMPT model as ``model.onnx``, checked against torch.

The graph is the module ``evaluate.py`` attacks: the backbone's image tower
and a normalized linear head on the fixed text features (fixed prompts),
or the image tower, AMPT's router and the router-mixed heads (AMPT, which
also outputs the router weights). ``onnx.checker`` checks the file and
``onnxruntime`` runs it on random images; the largest logit difference to
torch is returned (and recorded in ``ampt_model.json``). Other methods are
refused before anything is written (their ``graph_note`` says why).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..errors import MissingDependencyError, UserError

OPSET = 17
TOLERANCE = 1e-4
INSTALL = 'pip install -e ".[export]" (onnx, onnxruntime)'


class _WithRouterWeights(nn.Module):
    """``(logits, router weights)`` of the evaluated module (AMPT), so an ONNX user sees the routing too."""

    def __init__(self, evaluated: nn.Module) -> None:
        super().__init__()
        self.evaluated = evaluated

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.evaluated(images)
        return logits, self.evaluated.model.router_weights()


def export_onnx(evaluated: nn.Module, path: Path, image_size: int, routed: bool = False) -> Dict[str, Any]:
    """Write ``evaluated`` (images [B, 3, S, S] in [0, 1] -> logits) to ``path``; returns what the check found."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(f"--onnx needs onnx and onnxruntime: {INSTALL} ({err})") from None
    evaluated = evaluated.cpu().eval()
    module = _WithRouterWeights(evaluated) if routed else evaluated
    outputs = ["logits", "router_weights"] if routed else ["logits"]
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=outputs,
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    images = torch.rand(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = evaluated(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    diff = float(abs(got - expected).max())
    if not diff <= TOLERANCE:
        raise UserError(f"The ONNX graph's logits differ from torch's by {diff:.2e} (> {TOLERANCE:g}): not written; "
                        "report this with your torch and onnx versions")
    return {"file": path.name, "opset": OPSET, "outputs": outputs, "max_abs_diff": diff,
            "checked_with": f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"}
