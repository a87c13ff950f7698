"""Models we hand out, as complete HuggingFace folders (config, tokenizer, model.safetensors).

- `save_hf_folder`: a Backbone's model and tokenizer, loadable with `AutoModel*.from_pretrained`
  (an encoder-only scorer also writes its answer bias to `e2urec_scorer.safetensors`, which
  `load_backbone` reads back), plus `e2urec.json`: the deletion requests this model has
  served (counts and dates; who was forgotten is the operator's record only) and the first Original it descends from.
- `merged_backbone`: the Original with a trained student's LoRA deltas added to its weights
  (works for an 8-bit student too: the deltas go onto the fp32 Original).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import fail
from ..files import read_json_object, save_safetensors_atomic, staged_dir
from .backbone import Backbone, MaskedScorer
from .lora import lora_modules

MANIFEST = "e2urec.json"


def save_hf_folder(bb: Backbone, folder, manifest: dict | None = None) -> Path:
    folder = Path(folder)
    with staged_dir(folder) as tmp:
        model = bb.model.encoder if isinstance(bb.model, MaskedScorer) else bb.model
        if lora_modules(model):
            raise ValueError("save_hf_folder wants a plain model: merge the adapter first (merged_backbone)")
        model.save_pretrained(tmp, safe_serialization=True)
        bb.tokenizer.save_pretrained(tmp)
        if isinstance(bb.model, MaskedScorer):
            save_safetensors_atomic({"bias": bb.model.bias.detach()}, tmp / "e2urec_scorer.safetensors")
        if manifest is not None:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def read_manifest(folder) -> dict:
    """The e2urec.json of a folder we handed out ({} for any other model folder)."""
    p = Path(folder) / MANIFEST
    if not p.exists():
        return {}
    m = read_json_object(p, "unreadable request history")
    problem = None
    if not isinstance(m.get("requests", []), list):
        problem = "not an object with a list 'requests'"
    elif any(not isinstance(r, dict) or not isinstance(r.get("users_sha256", []), list) for r in m.get("requests", [])):
        problem = "a 'requests' entry is not an object with a list 'users_sha256'"
    else:
        problem = next((f"'{k}' is not a string" for k in ("root_original", "retain_cache", "data_hash", "record")
                        if m.get(k) is not None and not isinstance(m[k], str)), None)
    if problem:
        raise fail(p, f"unreadable request history ({problem})")
    return m


@torch.no_grad()
def merged_backbone(student: Backbone, orig: Backbone) -> Backbone:
    """A copy of `orig` with every LoRA delta of `student` merged into the matching weight."""
    out = orig.clone()
    for name, m in lora_modules(student.model).items():
        target = out.model.get_submodule(name)
        if type(target) is not torch.nn.Linear:
            raise TypeError(f"{name}: cannot merge into {type(target).__name__}")
        target.weight.add_(m.delta_weight().to(target.weight.dtype))
    out.model.eval()
    return out
