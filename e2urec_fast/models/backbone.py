"""Backbones: local HuggingFace folders and config presets with trained tokenizers.

A `Backbone` bundles a seq2seq model, its tokenizer, the Yes/No token ids and the
decoder prefix that leads to the answer position. For T5 the answer is predicted at
the first decoder step (prefix = [decoder_start]); for BART, whose targets start with
<s>, one step later (prefix = [decoder_start, <s>]).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import fail, staged_dir

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class Preset:
    family: str  # "t5" or "bart"
    d_model: int
    d_ff: int
    layers: int
    heads: int
    d_kv: int = 64
    tok_vocab: int = 8000  # size of the tokenizer trained on the train prompts
    model_vocab: int | None = None  # embedding rows; None = the tokenizer's size


PRESETS = {
    "tiny": Preset("t5", d_model=64, d_ff=256, layers=2, heads=4, d_kv=16, tok_vocab=2000),
    "small": Preset("t5", d_model=256, d_ff=1024, layers=4, heads=4, d_kv=64, tok_vocab=4000),
    "t5-base-config": Preset("t5", d_model=768, d_ff=3072, layers=12, heads=12, tok_vocab=8000, model_vocab=32128),
    "t5-large-config": Preset("t5", d_model=1024, d_ff=4096, layers=24, heads=16, tok_vocab=8000, model_vocab=32128),
    "bart-tiny": Preset("bart", d_model=64, d_ff=256, layers=2, heads=4, tok_vocab=2000),
    "bart-base-config": Preset("bart", d_model=768, d_ff=3072, layers=6, heads=12, tok_vocab=8000, model_vocab=50265),
}


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object
    family: str
    folder: Path
    yes_id: int
    no_id: int
    prefix: torch.Tensor  # (P,) decoder input ids up to the answer position
    targets: dict  # label -> (T,) target ids ("Yes." / "No." with the tokenizer's specials)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def answer_pos(self) -> int:
        return len(self.prefix) - 1

    def clone(self) -> Backbone:
        """The same backbone with a deep copy of the model (tokenizer and ids shared)."""
        return Backbone(copy.deepcopy(self.model), self.tokenizer, self.family, self.folder, self.yes_id, self.no_id,
                        self.prefix, self.targets)

    def tokenizer_key(self) -> str:
        """Hash of the tokenizer's vocabulary (token ids depend on nothing else)."""
        vocab = json.dumps(self.tokenizer.get_vocab(), sort_keys=True) + type(self.tokenizer).__name__
        return hashlib.sha256(vocab.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Hash of the weights and tokenizer (for caches keyed by the model)."""
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        h.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
        return h.hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int, family: str):
    """A BPE tokenizer trained on the prompts; "Yes", "No" and "." are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = T5_SPECIALS if family == "t5" else BART_SPECIALS
    unk = "<unk>"
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(list(texts) + ["Yes. No."] * 100, trainer=trainer)
    if family == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token=unk)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                     unk_token=unk, mask_token="<mask>")
    return hf


def _config(p: Preset, vocab: int, tok):
    from transformers import BartConfig, T5Config

    if p.family == "t5":
        return T5Config(vocab_size=vocab, d_model=p.d_model, d_ff=p.d_ff, d_kv=p.d_kv, num_layers=p.layers,
                        num_decoder_layers=p.layers, num_heads=p.heads, dropout_rate=0.1, feed_forward_proj="relu",
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
                        tie_word_embeddings=True)
    return BartConfig(vocab_size=vocab, d_model=p.d_model, encoder_ffn_dim=p.d_ff, decoder_ffn_dim=p.d_ff,
                      encoder_layers=p.layers, decoder_layers=p.layers, encoder_attention_heads=p.heads,
                      decoder_attention_heads=p.heads, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                      forced_eos_token_id=tok.eos_token_id)


def build_preset(name: str, train_prompts: list[str], folder: Path, seed: int = 0) -> Path:
    """Train the tokenizer, build the model with seeded random weights, save both."""
    from transformers import AutoModelForSeq2SeqLM

    p = PRESETS[name]
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return folder
    print(f"building backbone preset {name!r} in {folder}", file=sys.stderr)
    with staged_dir(folder) as tmp:
        tok = train_tokenizer(train_prompts, p.tok_vocab, p.family)
        vocab = max(p.model_vocab or 0, len(tok))
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(_config(p, vocab, tok))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "e2urec_preset.json").write_text(json.dumps(dict(preset=name, seed=seed, **asdict(p))) + "\n")
    return folder


def load_backbone(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backbone:
    """Load a local HF T5 or BART folder (safetensors weights only; never pickles)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise fail(folder, "backbone folder not found (give a preset name or a local HuggingFace folder)")
    if not (folder / "config.json").exists():
        raise fail(folder, "no config.json: not a HuggingFace model folder")
    if not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists():
        raise fail(folder, "no model.safetensors weights (only safetensors are loaded, never pickles)")
    try:
        cfg = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise fail(folder / "config.json", f"unreadable config ({e})") from None
    if cfg.model_type not in ("t5", "bart", "mt5"):
        raise fail(folder / "config.json", f"model_type {cfg.model_type!r} is not an encoder-decoder T5 or BART")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise fail(folder, f"no usable tokenizer ({type(e).__name__}: {e})") from None
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, use_safetensors=True, dtype=dtype)
    except Exception as e:
        raise fail(folder / "model.safetensors", f"could not load weights ({type(e).__name__}: {str(e)[:200]})") from None
    model.to(device)
    family = "bart" if cfg.model_type == "bart" else "t5"
    targets = {}
    for label, text in ((1, "Yes."), (0, "No.")):
        targets[label] = torch.tensor(tok(text)["input_ids"])
    # the answer position is the first target token that is not a special token
    specials = set(tok.all_special_ids)
    ans = [int(next(i for i, t in enumerate(targets[lab].tolist()) if t not in specials)) for lab in (0, 1)]
    if ans[0] != ans[1]:
        raise fail(folder, "'Yes.' and 'No.' put their answer token at different positions")
    yes_id, no_id = int(targets[1][ans[1]]), int(targets[0][ans[0]])
    words = [tok.decode([i]).strip() for i in (yes_id, no_id)]
    if yes_id == no_id or tok.unk_token_id in (yes_id, no_id) or words != ["Yes", "No"]:
        raise fail(folder, f"the tokenizer has no single-token Yes/No pair ('Yes.' and 'No.' start with {words}); "
                           "Yes/No scoring needs both words as tokens")
    start = model.config.decoder_start_token_id
    prefix = torch.tensor([start] + targets[1][: ans[1]].tolist())
    return Backbone(model, tok, family, folder, yes_id, no_id, prefix, targets)


def resolve_backbone(name_or_path: str, prepared, cache_dir, seed: int = 0) -> Path:
    """A preset name becomes a folder in the cache built for this data set; else a path."""
    if name_or_path in PRESETS:
        key = prepared.manifest["content_hash"][:12]
        folder = Path(os.path.expanduser(str(cache_dir))) / "backbones" / f"{name_or_path}-{prepared.manifest['params']['dataset']}-{key}-s{seed}"
        return build_preset(name_or_path, prepared.train_prompts(), folder, seed)
    p = Path(name_or_path)
    if not p.exists():
        raise fail(p, f"backbone not found: neither a preset ({', '.join(PRESETS)}) nor a folder")
    return p
