"""``python -m ampt.app ARTIFACT``: a browser page to try an exported model and attack it (gradio).

Drop an image: the page shows the model's prediction. Choose an eps (in
1/255) and the number of PGD steps, press "Attack": it shows the
adversarial image, the perturbation magnified to the full pixel range, the
prediction on the adversarial image and, for a model with a router (AMPT),
the router weights before and after the attack. The attack is untargeted
against the clean prediction (:mod:`ampt.attacks`, white-box, through the
router), with the toolkit's seeded random start.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .deploy import load_classifier
from .deploy.classifier import Classifier
from .errors import MissingDependencyError
from .utils.cli import DEBUG_FLAG, DEBUG_HELP, OneLineArgumentParser, exit_process, run_cli

ATTACKS = ("pgd", "cw", "tpgd")  # the iterative attacks with a step count (ampt.attacks)
SHOWN_SIZE = 224  # pixels of the shown images (a 32 px input is enlarged, nearest neighbour)
TOP = 5


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as err:
        raise MissingDependencyError(f'The page needs gradio: pip install -e ".[app]" ({err})') from None
    return gradio


class Demo:
    """The page's computations on one classifier (no gradio here, so they are testable alone)."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.device = classifier.text_features.device

    def prepare(self, image: Any) -> torch.Tensor:
        return self.classifier.preprocess(image).unsqueeze(0).to(self.device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Tuple[Dict[str, float], Optional[Dict[str, float]]]:
        """(class -> probability, prompt -> router weight or None) of one image."""
        probabilities = self.classifier(images).softmax(dim=-1)[0].cpu()
        weights = self.classifier.router_weights()
        labels = {name: float(p) for name, p in zip(self.classifier.classnames, probabilities)}
        routed = None if weights is None else {f"prompt {k + 1}": float(w) for k, w in enumerate(weights[0].cpu())}
        return labels, routed

    def attack(self, images: torch.Tensor, attack: str, eps: float, steps: int) -> torch.Tensor:
        """The adversarial image against the clean prediction (eps in 1/255 units)."""
        from .attacks import build_attack

        with torch.no_grad():
            label = self.classifier(images).argmax(dim=-1)
        adversary = build_attack(attack, self.classifier, eps, steps=int(steps),
                                 num_classes=len(self.classifier.classnames), seed=0)
        return adversary(images, label).detach()


def to_picture(pixels: torch.Tensor):
    """A ``[1, 3, S, S]`` tensor in [0, 1] as a PIL image enlarged to :data:`SHOWN_SIZE`."""
    from PIL import Image

    array = (pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(array).resize((SHOWN_SIZE, SHOWN_SIZE), Image.NEAREST)


def magnified(delta: torch.Tensor, eps: float):
    """The perturbation scaled from [-eps, eps] to [0, 1] (grey is no change)."""
    scale = max(eps / 255.0, 1e-12)
    return to_picture(delta / (2 * scale) + 0.5)


def build_app(classifier: Classifier):
    """The gradio page for ``classifier``."""
    gr = _import_gradio()
    demo = Demo(classifier)
    meta = classifier.metadata
    routed = "router_weights" in meta["method"]["model_features"]
    train_eps = float(meta["training"]["train_eps"]) or 4.0

    def on_image(image):
        if image is None:
            return None, None
        labels, weights = demo.predict(demo.prepare(image))
        return labels, weights

    def on_attack(image, attack, eps, steps):
        if image is None:
            raise gr.Error("Drop an image first")
        images = demo.prepare(image)
        adversarial = demo.attack(images, attack, float(eps), int(steps))
        labels, weights = demo.predict(adversarial)
        return to_picture(adversarial), magnified(adversarial - images, float(eps)), labels, weights

    title = f"{meta['method']['trainer']} on {meta['training']['dataset']}: prediction and attack"
    with gr.Blocks(title=title) as page:
        backbone = Path(meta["backbone"]["name"]).name if Path(meta["backbone"]["name"]).is_file() \
            else meta["backbone"]["name"]
        gr.Markdown(f"## {title}\nBackbone `{backbone}`; trained at eps "
                    f"{meta['training']['train_eps']:g}/255. Drop an image, then attack it.")
        with gr.Row():
            with gr.Column(min_width=220):
                image = gr.Image(type="pil", label="image", elem_id="image")
                attack = gr.Dropdown(list(ATTACKS), value="pgd", label="attack", elem_id="attack")
                eps = gr.Slider(0.5, 32, value=train_eps, step=0.5, label="eps (1/255)", elem_id="eps")
                steps = gr.Slider(1, 100, value=10, step=1, label="steps", elem_id="steps")
                button = gr.Button("Attack", variant="primary", elem_id="attack-button")
            with gr.Column(min_width=220):
                clean = gr.Label(num_top_classes=TOP, label="prediction", elem_id="clean")
                clean_router = gr.Label(label="router weights", elem_id="clean-router", visible=routed)
            with gr.Column(min_width=220):
                adversarial = gr.Image(label="adversarial image", elem_id="adversarial", interactive=False)
                perturbation = gr.Image(label="perturbation (magnified)", elem_id="perturbation", interactive=False)
            with gr.Column(min_width=220):
                attacked = gr.Label(num_top_classes=TOP, label="prediction under attack", elem_id="attacked")
                attacked_router = gr.Label(label="router weights under attack", elem_id="attacked-router",
                                           visible=routed)
        image.change(on_image, [image], [clean, clean_router])
        button.click(on_attack, [image, attack, eps, steps], [adversarial, perturbation, attacked, attacked_router])
    return page


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m ampt.app", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="a folder written by python -m ampt.export")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    page = build_app(load_classifier(args.artifact, device=args.device))
    page.launch(server_name=args.host, server_port=args.port)
    return 0


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    exit_process(cli())
