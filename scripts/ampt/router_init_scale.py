#!/usr/bin/env python
"""Scale of AMPT's router logits at initialisation, on a backbone and a dataset's training images.

    python scripts/ampt/router_init_scale.py BACKBONE DATA_ROOT [--dataset-config configs/datasets/digits.yaml]

Prints, for router input scales 1 (today's router), 10, 30 and 100 (CLIP's logit scale):
the standard deviation of the logits across the K prompts per image, the
per-image entropy of the weights against log K, and the mean TV distance of
the weights to their mean, for default-initialised linear routers (5 seeds).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ampt.api import DATASET_REGISTRY  # noqa: E402
from ampt.config import get_cfg_default  # noqa: E402
from ampt.data.images import read_image  # noqa: E402
from torchvision.transforms.functional import resize, to_tensor  # noqa: E402
from ampt.models import load_clip  # noqa: E402
from ampt.models.prompted_clip import PromptedCLIP  # noqa: E402
from ampt.models.router import Router  # noqa: E402
from ampt.models.router_stats import tv_from_mean, weight_entropy  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backbone")
    p.add_argument("root")
    p.add_argument("--dataset-config", default="configs/datasets/digits.yaml")
    p.add_argument("--n-prompts", type=int, default=4)
    args = p.parse_args()
    load_plugins("builtin")
    cfg = get_cfg_default()
    cfg.merge_from_file(args.dataset_config)
    cfg.DATASET.ROOT = args.root
    dataset = DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
    clip_model = load_clip(args.backbone)
    model = PromptedCLIP(clip_model, None).eval()
    size = clip_model.visual.input_resolution
    images = torch.stack([to_tensor(resize(read_image(d.impath), [size, size])) for d in dataset.train_x[:200]])
    with torch.no_grad():
        features = model.encode_image(images)
    d = features.shape[1]
    print(f"{len(images)} training images, feature dim D = {d}, |f| = {features.norm(dim=1).mean():.3f}, "
          f"mean |f_i| = {features.abs().mean():.4f}; default Linear init U(+-1/sqrt(D)): "
          f"expected logit std 1/sqrt(3D) = {1 / math.sqrt(3 * d):.4f}")
    for scale in (1.0, 10.0, 30.0, 100.0):
        rows = []
        for seed in range(5):
            torch.manual_seed(seed)
            router = Router(d, args.n_prompts, input_scale=scale)
            with torch.no_grad():
                logits, weights = router.logits(features), router(features)
            rows.append((float(logits.std(dim=1).mean()), float(logits.std(dim=0).mean()),
                         float(weight_entropy(weights).mean()), tv_from_mean(weights)))
        mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
        print(f"input scale {scale:g}: logit std across prompts {mean[0]:.4f}, across images {mean[1]:.4f}; "
              f"entropy {mean[2]:.4f} (log K {math.log(args.n_prompts):.4f}); TV from the mean {mean[3]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
