"""Reports: the paper-style table (metrics x100) in Markdown, plus JSON."""

from __future__ import annotations

import math

COLUMNS = [("auc", "AUC"), ("acc", "ACC"), ("logloss", "LogLoss"), ("jsd", "JSD"), ("l2", "L2")]


def _fmt(v, scale=100.0, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.{digits}f}"


def _params(n) -> str:
    return "-" if not n else f"{n:.2e}" if n >= 1e5 else str(n)


def markdown_table(rows: list[dict]) -> str:
    head = "| Method | " + " | ".join(c for _, c in COLUMNS) + " | Time(s) | #Params |"
    sep = "|" + "---|" * (len(COLUMNS) + 3)
    lines = [head, sep]
    for r in rows:
        cells = [_fmt(r.get(k)) for k, _ in COLUMNS]
        t = r.get("time_s")
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {'-' if t is None else f'{t:.1f}'} | {_params(r.get('trainable_params'))} |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    c = report["counts"]
    s = report["settings"]
    parts = [
        f"# E2URec unlearning report: {s['dataset']}, backbone {s['backbone']}",
        "",
        "AUC, ACC, LogLoss on test; JSD (the authors' symmetric KL) and L2 on D_f against Retrain; all x100.",
        "Time(s): unlearning wall-clock (Retrain: its training time). #Params: trainable parameters.",
        "",
        markdown_table(report["rows"]),
        "",
        f"Samples after the history filter: {c['samples_after_filter']}; used: {c['samples']} "
        f"(train {c['train']}, valid {c['valid']}, test {c['test']}); forgetting users {c['forget_users']} of "
        f"{c['train_users']}; |D_f| = {c['forget']}, |D_r| = {c['retain']}.",
        "",
        f"Device {report['env']['device']}, torch {report['env']['torch']}, seed {s['seed']}, "
        f"git {report['env']['git']}, wall-clock of the whole job {report['total_s']:.0f} s.",
    ]
    for r in report["rows"]:
        if r.get("stages"):
            st = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
            parts.append(f"{r['method']} stages: {st}.")
    return "\n".join(parts) + "\n"
