"""LoRA without peft: y = base(x) + B(A(dropout(x))) * lora_alpha / r.

A is kaiming-uniform (a = sqrt(5)), B is zero, so a fresh adapter changes nothing.
`base` may be a plain nn.Linear or a bitsandbytes Linear8bitLt (anything with
in_features / out_features). Adapters save as `adapter_model.safetensors` +
`adapter_config.json` with PEFT's key layout
(`base_model.model.<module>.lora_A.weight`), so `PeftModel.from_pretrained` loads them.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import fail
from ..files import load_safetensors, save_safetensors_atomic, write_json_atomic

TASK_TYPE = {"t5": "SEQ_2_SEQ_LM", "bart": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM", "masked": "FEATURE_EXTRACTION"}
DEFAULT_TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"], "causal": ["q_proj", "v_proj"], "masked": ["query", "value"]}


@dataclass
class LoraConfig:
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # names' last parts (["q", "v"]: every module called q or v), or, as in PEFT, one regular
    # expression that the whole module name must match (a cached boundary's adapter, boundary.py)
    target_modules: list | str = field(default_factory=lambda: ["q", "v"])


def targeted(name: str, module: nn.Module, target_modules: list | str) -> bool:
    """Whether `inject_lora` wraps this module: PEFT's rule (a string is a full-match regex,
    a list matches the name's last part)."""
    if not hasattr(module, "in_features"):
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name.split(".")[-1] in target_modules


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, lora_alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        dev = next(base.parameters()).device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev)  # weight (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = lora_alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            if self.disabled:  # the merged base carries the adapter: take it out again
                y = y - nn.functional.linear(x.to(self.lora_A.weight.dtype), self.delta_weight()).to(y.dtype)
            return y
        if self.disabled:
            return y
        a = self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype)))
        return y + (self.lora_B(a) * self.scaling).to(y.dtype)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self._plain_weight().add_(self.delta_weight().to(self._plain_weight().dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self._plain_weight().sub_(self.delta_weight().to(self._plain_weight().dtype))
            self.merged = False

    def _plain_weight(self) -> torch.Tensor:
        if type(self.base) is not nn.Linear:
            raise TypeError(f"merge needs a plain nn.Linear base, not {type(self.base).__name__}")
        return self.base.weight


def inject_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap every module whose name ends in one of cfg.target_modules; freeze the rest."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if targeted(n, m, cfg.target_modules)]
    if not names:
        raise ValueError(f"no module named {cfg.target_modules} to put LoRA on")
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.lora_alpha, cfg.lora_dropout))
    model._lora_config = cfg
    return names


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Every adapter merged into its base weight and the LoRA wrappers replaced by their
    (plain) bases: a model with the state-dict keys and fingerprint of one without LoRA."""
    for n, m in lora_modules(model).items():
        m.merge()
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, m.base)
    model.__dict__.pop("_lora_config", None)
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapter_disabled(model: nn.Module):
    """Run the frozen base model: the remembering teacher is the student without its adapter."""
    mods = list(lora_modules(model).values())
    old = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, o in zip(mods, old):
            m.disabled = o


def base_eval_mode(model: nn.Module) -> nn.Module:
    """Frozen base in eval mode (no dropout), LoRA branches in train mode (their dropout on)."""
    model.eval()
    for m in lora_modules(model).values():
        m.dropout.train()
    return model


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights in PEFT's key layout, named as in the HuggingFace model PEFT wraps
    (a wrapper of ours, the masked family's scorer, drops its `peft_prefix`)."""
    out, pre = {}, getattr(model, "peft_prefix", "")
    for n, m in lora_modules(model).items():
        n = n.removeprefix(pre)
        out[f"base_model.model.{n}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"base_model.model.{n}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


def save_adapter(model: nn.Module, folder, base_model_name: str = "", task_type: str = "SEQ_2_SEQ_LM") -> Path:
    folder = Path(folder)
    cfg: LoraConfig = model._lora_config
    save_safetensors_atomic(lora_state(model), folder / "adapter_model.safetensors")
    write_json_atomic(folder / "adapter_config.json", dict(
        peft_type="LORA", task_type=task_type, base_model_name_or_path=base_model_name, r=cfg.r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules), bias="none",
        fan_in_fan_out=False, inference_mode=True, init_lora_weights=True, modules_to_save=None, use_rslora=False,
        use_dora=False, layers_to_transform=None, layers_pattern=None, rank_pattern={}, alpha_pattern={},
        revision=None))
    return folder


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Inject LoRA as described by adapter_config.json and load its weights."""
    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.exists():
        raise fail(cfg_path, "file not found")
    try:
        c = json.loads(cfg_path.read_text())
        cfg = LoraConfig(r=int(c["r"]), lora_alpha=c["lora_alpha"], lora_dropout=c.get("lora_dropout", 0.0),
                         target_modules=c["target_modules"] if isinstance(c["target_modules"], str) else list(c["target_modules"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise fail(cfg_path, f"not a LoRA adapter config ({e})") from None
    inject_lora(model, cfg)
    state = load_safetensors(folder / "adapter_model.safetensors")
    mods = lora_modules(model)
    for key, t in state.items():
        name = key.removeprefix("base_model.model.").rsplit(".", 2)[0]
        if name not in mods:  # PEFT's layout under a wrapper of ours (adapters saved before it kept the prefix)
            name = getattr(model, "peft_prefix", "") + name
        if name not in mods:
            raise fail(folder / "adapter_model.safetensors", f"tensor {key} matches no LoRA module of this model")
        getattr(mods[name], key.rsplit(".", 2)[1]).weight.data.copy_(t)
    return model

