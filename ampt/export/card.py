"""The model card (``README.md``) of an exported folder, in the layout of a Hugging Face model repository.

YAML front matter (license, tags, ``model-index`` with each record as a
metric), then: what the model is, intended use and limits, the numbers
with their attack settings, the checkpoint it holds, how to load it, the
backbone and its weights' license as recorded. Everything comes from
``ampt_model.json``; nothing is measured here.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

METHODS = {  # one line per built-in method; a plug-in's trainer gets the generic line
    "ZeroshotCLIP": "zero-shot CLIP with a hand-written prompt (nothing learned)",
    "CoOp": "CoOp: a learned prompt (context vectors), trained on clean images",
    "APT": "APT: a learned prompt trained on adversarial (PGD) images",
    "AMPT": "AMPT: K learned prompts mixed per image by a router, trained on adversarial images",
    "FAP": "FAP: deep prompts in both towers with image-to-text coupling, adversarially trained",
    "AdvMaPLe": "AdvMaPLe (FAP's code): deep prompts with image-to-text coupling, adversarially trained",
    "AdvMaPLeOrig": "AdvMaPLe with MaPLe's text-to-image coupling, adversarially trained",
    "AdvVLP": "AdvVLP: independent deep prompts in both towers, adversarially trained",
    "AdvVP": "AdvVP: a learned visual prompt (pixel frame + image tokens), adversarially trained",
    "DEFEAT": "DEFEAT: APT's prompt plus a VQ-VAE PerturbShield on the patch features, adversarially trained",
    "MoEAdvVLP": "mixture-of-experts deep prompts with per-block gates, adversarially trained",
}


def render_card(document: Dict[str, Any]) -> str:
    return _front_matter(document) + "\n" + _body(document)


def _front_matter(doc: Dict[str, Any]) -> str:
    method, backbone = doc["method"], doc["backbone"]
    lines = ["---", f"license: {backbone['license']}"]
    if backbone["license"] == "other":
        lines += ["license_name: backbone-weights-license-not-recorded"]
    lines += ["library_name: ampt-toolkit", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {tag}" for tag in dict.fromkeys(("clip", "prompt-learning", "adversarial-robustness", "ampt",
                                                   method["trainer"].lower()))]
    lines += ["model-index:", f"- name: {json.dumps(_model_name(doc))}", "  results:"]
    for record in doc["results"]["records"]:
        lines += ["  - task:", "      type: image-classification",
                  "    dataset:", f"      name: {json.dumps(record['dataset'])}",
                  f"      type: {json.dumps(record['dataset'].lower())}", f"      split: {json.dumps(record['split'])}",
                  "    metrics:", "    - type: accuracy", f"      value: {record['accuracy']}",
                  f"      name: {json.dumps(_record_name(record))}"]
    if not doc["results"]["records"]:
        lines[-1] = "  results: []"
    lines += [f"base_model: {json.dumps(_backbone_label(backbone))}" if _is_hub_name(backbone) else "", "---"]
    return "\n".join(line for line in lines if line) + "\n"


def _body(doc: Dict[str, Any]) -> str:
    method, training, backbone, results = doc["method"], doc["training"], doc["backbone"], doc["results"]
    what = METHODS.get(method["trainer"], f"{method['trainer']}: a prompt-learning method of the ampt toolkit")
    checkpoint = _checkpoint(training, bool(method["learned_modules"]))
    attack = training.get("attack") or {}
    train = (f"adversarially at eps {training['train_eps']:g}/255 (PGD, {attack.get('train_steps', '?')} steps, "
             f"step {attack.get('train_alpha', '?')}/255, attack prompt {attack.get('train_attack_prompt', '?')}, "
             f"loss {attack.get('train_loss', '?')})" if training["adversarial"] else "on clean images")
    parts = [
        f"# {_model_name(doc)}", "",
        f"{what}, on the CLIP backbone `{_backbone_label(backbone)}`, for the {len(doc['classes'])} classes of "
        f"{training['dataset']} ({training['shots']} shots, seed {training['seed']}), trained {train}. "
        f"Exported with the ampt toolkit (`python -m ampt.export`).", "",
        f"**Checkpoint:** {checkpoint}.", "",
        "## Intended use and limits", "",
        f"- Classifying images into these classes: {', '.join(doc['classes'][:20])}"
        f"{' ...' if len(doc['classes']) > 20 else ''}.",
        "- Research on adversarial robustness: the numbers below hold for the attacks listed, at their budgets, "
        "on the listed test images; a stronger or adaptive attack, another budget or other images may give less.",
        "- Inputs are RGB images preprocessed as below (pixels in [0, 1]); the model normalizes them itself.",
        f"- Not for decisions about people or safety-critical use. Robustness at eps {training['train_eps']:g}/255 "
        "says nothing about other perturbations (rotations, corruptions, larger budgets).", "",
        "## Results", "",
        f"Protocol: `{results.get('protocol') or 'unknown'}`; seeds: {', '.join(str(s) for s in results['seeds'])}. "
        "Accuracy counts an image only if it is right clean and under the attack.", "",
        "| dataset | split | attack | eps (/255) | steps | images | accuracy % | setting |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    parts += [_record_row(r) for r in results["records"]] or ["| - | - | none recorded | | | | | |"]
    parts += [""] + _audit_lines(results.get("audit", []))
    parts += [
        "## How to load", "",
        "```python",
        "import ampt",
        'classifier = ampt.load_classifier("THIS_FOLDER", device="cpu")',
        "logits = classifier(images)  # images: [B, 3, "
        f"{doc['preprocess']['size']}, {doc['preprocess']['size']}] RGB pixels in [0, 1]",
        "```", "",
        "`classifier.preprocess(pil_image)` gives such a tensor, `classifier.classnames` the labels"
        + (", `classifier.router_weights()` the router's weights of the latest forward" if "router_weights" in
           method["model_features"] else "")
        + (", `classifier.set_classes([...])` re-encodes the prompts for new class names." if not
           method["class_specific"] else "; the prompts were learned per class, so new class names are refused."),
        "From the command line: `python -m ampt.predict THIS_FOLDER images/ --csv out.csv`; "
        "`python evaluate.py THIS_FOLDER --attack clean pgd --root DATA` measures it again.", "",
        "## Preprocessing", "",
        f"{doc['preprocess']['resize'].capitalize()} ({doc['preprocess']['size']} px, "
        f"{doc['preprocess']['interpolation']}); mean {doc['preprocess']['mean']}, std {doc['preprocess']['std']} "
        "(applied inside the model).", "",
        "## Backbone and license", "",
        f"- Backbone: `{_backbone_label(backbone)}` ({backbone['kind']} package), weights SHA-256 "
        f"`{backbone['state_sha256']}` (checked when loading)"
        + (f"; robust visual weights `{backbone['robust_weights']}`" if backbone["robust_weights"] else "") + ".",
        f"- License of the backbone weights: `{backbone['license']}` ({backbone['license_source']}). The learned "
        "tensors here are derived from them.", "",
        "## Files", "",
        f"- `model.safetensors`: the learned tensors and the class text features "
        f"(SHA-256 of the tensors `{doc['files']['model.safetensors']['tensors_sha256']}`); no pickle.",
        "- `ampt_model.json`: what this model is (backbone, preprocessing, classes, method settings, results).",
    ]
    if "onnx" in doc:
        onnx = doc["onnx"]
        parts.append(f"- `model.onnx`: the image tower and head (opset {onnx['opset']}), outputs "
                     f"{', '.join(onnx['outputs'])}; max |logit difference| to torch {onnx['max_abs_diff']:.2e}.")
    return "\n".join(parts) + "\n"


def _checkpoint(training: Dict[str, Any], learned: bool) -> str:
    if not learned:
        return "none: nothing is learned, the prompt is hand-written"
    epoch = training["checkpoint_epoch"]
    which = (f"epoch {epoch} of {training['max_epoch']}" if epoch is not None
             else "the best-validation checkpoint (model-best.pth.tar)")
    if training["finished"]:
        return f"{which}, the finished run's deployed model"
    return f"{which}: the run had NOT finished training when it was exported (--force)"


def _model_name(doc: Dict[str, Any]) -> str:
    training = doc["training"]
    return f"{doc['method']['trainer']} {training['dataset']} {training['shots']}-shot seed {training['seed']}"


def _backbone_label(backbone: Dict[str, Any]) -> str:
    return f"{backbone['name']} ({backbone['pretrained']})" if backbone.get("pretrained") else backbone["name"]


def _is_hub_name(backbone: Dict[str, Any]) -> bool:
    return str(backbone["name"]).startswith("hf-hub:")


def _record_name(record: Dict[str, Any]) -> str:
    return record.get("label") or (f"{record['attack']} eps {record['eps']:g}/255" if record["attack"] != "clean"
                                   else "clean accuracy")


def _record_row(r: Dict[str, Any]) -> str:
    setting = [f"prompt {r['prompt']}" if r.get("prompt") else "", f"alpha {r['alpha']:g}" if r.get("alpha") else "",
               f"restarts {r['restarts']}" if r.get("restarts", 1) != 1 else "",
               f"EOT {r['eot_iter']}" if r.get("eot_iter", 1) != 1 else "", "BPDA" if r.get("bpda") else "",
               r.get("attack_options", ""), f"seed {r['seed']}" if r.get("seed") is not None else ""]
    eps = "-" if r["attack"] == "clean" else f"{r['eps']:g}"
    return (f"| {r['dataset']} | {r['split']} | {r['attack']} | {eps} | {r.get('steps') or '-'} | {r['n_samples']} | "
            f"{r['accuracy']:.2f} | {', '.join(s for s in setting if s)} |")


def _audit_lines(audits: List[Dict[str, Any]]) -> List[str]:
    if not audits:
        return ["No attack audit (`python -m ampt.audit`) was recorded for these weights.", ""]
    lines = ["Attack audits (`python -m ampt.audit`) of these weights:", ""]
    for a in audits:
        flags = ", ".join(a["flags"]) or "no flags"
        lines.append(f"- {a['status']} at eps {a['eps']}/255 on {a['n_samples']} images ({flags}; checks: "
                     f"{', '.join(a['checks'])})")
    return lines + [""]
