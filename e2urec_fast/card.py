"""Model cards: the README.md of each folder we hand out (adapter/, merged/), in Hugging
Face's format (YAML front matter: base_model, library_name, tags), saying what was
forgotten (counts and dates, never the users), the request history, the test metrics, the
audit, and the command that made it.

`COMMAND` is set by the command line (unlearn.main); through the Python API the card says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .files import write_text_atomic

COMMAND: str | None = None
AUTO = {"t5": "AutoModelForSeq2SeqLM", "bart": "AutoModelForSeq2SeqLM", "causal": "AutoModelForCausalLM",
        "masked": "AutoModel"}
SHOWN = ("CTR floor (LogReg)", "Original", "Retrain", "E2URec")


def _yaml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a YAML string: quotes and backslashes escaped


def model_card(kind: str, base_model: str, family: str, report: dict, audit_md: str) -> str:
    """The card of `kind` 'adapter' (LoRA, loads with PEFT) or 'merged' (plain transformers)."""
    from . import __version__
    from .report import markdown_table

    lib = "peft" if kind == "adapter" else "transformers"
    tags = ["e2urec", "machine-unlearning", "recommendation", "lora", report["settings"].get("dataset", "")]
    front = "\n".join(["---", f"base_model: {_yaml_str(base_model)}", f"library_name: {lib}", "tags:",
                       *[f"- {_yaml_str(t)}" for t in tags if t], "---"])
    c = report["counts"]
    reqs = report.get("request", {}).get("requests") or []
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if reqs:
        last = reqs[-1]
        n = last["n_users"]
        forgot = (f"This request forgot **{n} user{'s' if n != 1 else ''}** ({last['forget_samples']} train samples), served "
                  f"{last.get('date', '?')}; with the earlier requests on this model's line, "
                  f"{report.get('forgotten_users', '?')} users in all. Who they are is recorded nowhere in this folder, "
                  "nor in the report: only in the operator's private record beside the request's outputs.")
        hist = ["| # | date | users | D_f samples | D_r samples |", "|---|---|---|---|---|"]
        hist += [f"| {i} | {r.get('date', '?')} | {r.get('n_users', '?')} | {r.get('forget_samples', '?')} | "
                 f"{r.get('retain_samples', '?')} |" for i, r in enumerate(reqs, 1)]
        history = "\n".join(hist)
    else:
        forgot = (f"A benchmark split: **{c.get('forget_users')} users** of {c.get('train_users')} "
                  f"({c.get('forget')} train samples, scenario `{report.get('settings', {}).get('scenario', 'random')}`) "
                  "forgotten; the users are named nowhere in this folder nor in the report.")
        history = "No deletion request before this one (a benchmark run)."
    rows = [r for r in report["rows"] if r["method"] in SHOWN]
    auto = AUTO.get(family, "AutoModel")
    if kind == "adapter":
        load = (f"from peft import PeftModel\nfrom transformers import {auto}\n\n"
                f"base = {auto}.from_pretrained({base_model!r})\nmodel = PeftModel.from_pretrained(base, \"path/to/adapter\")")
    else:
        load = f"from transformers import {auto}\n\nmodel = {auto}.from_pretrained(\"path/to/merged\")"
    cmd = COMMAND or "made through the Python API (e2urec_fast.forget); every setting is in report.json's `settings`"
    title = "LoRA adapter" if kind == "adapter" else "Merged model"
    return f"""{front}

# {title}: a recommender on {report['settings'].get('dataset', '')} that forgot users (E2URec)

Made by e2urec_fast {__version__} on {when}: LoRA parameters trained on the frozen Original
(`{base_model}`) under a remembering and a forgetting teacher (E2URec).

## What was forgotten

{forgot}

## Request history

{history}

## Test metrics (x100; JSD and L2 on D_f against Retrain)

{markdown_table(rows, mark_best=False)}

## Forgetting audit

{audit_md.strip()}

## How to load

```python
{load}
```

## Command

```
{cmd}
```
"""


def write_cards(report: dict, handed: dict, base_model: str, family: str, audit_md: str) -> list[Path]:
    """README.md into the handed-out adapter/ and merged/ folders (atomically)."""
    done = []
    for kind in ("adapter", "merged"):
        folder = handed.get(kind)
        if folder is not None and Path(folder).is_dir():
            write_text_atomic(Path(folder) / "README.md", model_card(kind, base_model, family, report, audit_md))
            done.append(Path(folder) / "README.md")
    return done
