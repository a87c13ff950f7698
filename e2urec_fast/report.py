"""Reports: the paper's table 1 layout (metrics x100) in Markdown and CSV, a plot of D_f
JSD against unlearning time, plus JSON (written by the CLI).

The best value of each column among the unlearning methods is marked in bold, as in the
paper (higher is better for AUC and ACC, lower for the rest); Original, Retrain and the
CTR floor are reference rows and take no part.
"""

from __future__ import annotations

import csv
import io
import math
import platform
import subprocess
from pathlib import Path

COLUMNS = [("auc", "AUC"), ("acc", "ACC"), ("logloss", "LogLoss"), ("jsd", "JSD"), ("l2", "L2")]
HIGHER_BETTER = {"auc", "acc"}
# the shilling scenario's attack effect (closest to Retrain is best, so no bold)
TARGET = ("target_p_yes", "Target p(yes)")
# --item-separation: how much the answer depends on the item asked about (evaluate.item_separation)
ITEMS = [("item_spread", "item spread"), ("item_rate_corr", "item-rate corr.")]


def _columns(rows: list[dict]) -> list:
    return (COLUMNS + ([TARGET] if any(_num(r.get(TARGET[0])) is not None for r in rows) else [])
            + (ITEMS if any(_num(r.get(ITEMS[0][0])) is not None for r in rows) else []))


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _fmt(v, scale=100.0, digits=2) -> str:
    return "-" if _num(v) is None else f"{v * scale:.{digits}f}"


def _params(n) -> str:
    return "-" if not n else f"{n:.2e}" if n >= 1e5 else str(n)


def best_values(rows: list[dict]) -> dict:
    """Column -> the best value among the unlearning methods' rows (rounded as displayed)."""
    cand = [r for r in rows if r.get("kind", "unlearn") == "unlearn"]
    best = {}
    for key in [k for k, _ in COLUMNS] + ["time_s", "trainable_params"]:
        if key in ("time_s",):
            vals = [round(r[key], 1) for r in cand if _num(r.get(key)) is not None]
        elif key == "trainable_params":
            vals = [r[key] for r in cand if r.get(key)]
        else:
            vals = [round(r[key] * 100, 2) for r in cand if _num(r.get(key)) is not None]
        if len(vals) >= 2:
            best[key] = max(vals) if key in HIGHER_BETTER else min(vals)
    return best


def markdown_table(rows: list[dict], mark_best: bool = True) -> str:
    best = best_values(rows) if mark_best else {}
    cols = _columns(rows)
    head = "| Method | " + " | ".join(c for _, c in cols) + " | Time(s) | #Params |"
    sep = "|" + "---|" * (len(cols) + 3)
    lines = [head, sep]

    def bold(cell, key, shown):
        unl = r.get("kind", "unlearn") == "unlearn"
        return f"**{cell}**" if unl and key in best and shown is not None and shown == best[key] else cell

    for r in rows:
        cells = []
        for k, _ in cols:
            shown = None if _num(r.get(k)) is None else round(r[k] * 100, 2)
            cells.append(bold(_fmt(r.get(k)), k, shown))
        t = _num(r.get("time_s"))
        tc = bold("-" if t is None else f"{t:.1f}", "time_s", None if t is None else round(t, 1))
        pc = bold(_params(r.get("trainable_params")), "trainable_params", r.get("trainable_params") or None)
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {tc} | {pc} |")
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    """Raw fractions (not x100), one row per method."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = _columns(rows) + [("mia_loss_auc", ""), ("mia_ref_auc", ""), ("mia_floor_auc", ""), ("privleak", ""), ("forget_quality", "")]
    w.writerow(["method", "kind", *[k for k, _ in cols], "time_s", "trainable_params"])
    for r in rows:
        w.writerow([r["method"], r.get("kind", "unlearn"), *["" if _num(r.get(k)) is None else repr(r[k]) for k, _ in cols],
                    "" if _num(r.get("time_s")) is None else f"{r['time_s']:.3f}", r.get("trainable_params") or ""])
    return buf.getvalue()


def below_floor(rows: list[dict]) -> str | None:
    """The warning a report leads with when Original's test AUC does not beat the CTR floor
    (a logistic regression on the history's stars and the item's train statistics, floor.py):
    such a recommender has learned nothing a trivial model does not know, and every
    unlearning figure on it is noise. None otherwise."""
    by = {r["method"]: r for r in rows}
    floor = next((r for m, r in by.items() if m.startswith("CTR floor")), None)
    orig = by.get("Original")
    if floor is None or orig is None or _num(orig.get("auc")) is None or _num(floor.get("auc")) is None:
        return None
    if orig["auc"] > floor["auc"]:
        return None
    return (f"WARNING: Original's test AUC {100 * orig['auc']:.2f} does not beat the CTR floor's {100 * floor['auc']:.2f} "
            "(logistic regression on the history's stars and the item's train positive rate and count): this recommender "
            "has not learned more than the floor, so the unlearning figures below measure noise, not forgetting "
            "(where the signal is the item's identity, neither longer training nor 10x the samples closed this gap for the "
            "tiny preset; README, 'Second and third layouts')")


def plot_jsd_time(rows: list[dict], path, title: str = "") -> bool:
    """PNG: D_f JSD (x100) against unlearning time, one labelled point per method with both.
    Returns False (and writes nothing) when fewer than one such method exists."""
    pts = [(r["time_s"], r["jsd"] * 100, r["method"]) for r in rows
           if r["method"] != "Retrain" and _num(r.get("time_s")) is not None and _num(r.get("jsd")) is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for t, j, name in pts:
        color = "tab:red" if name.startswith("E2URec") else "tab:blue"
        ax.scatter([t], [j], color=color, zorder=3)
        ax.annotate(name, (t, j), textcoords="offset points", xytext=(5, 4), fontsize=8)
    orig = next((r for r in rows if r["method"] == "Original" and _num(r.get("jsd")) is not None), None)
    if orig is not None:  # the reference lines: where no unlearning leaves D_f (Original), and Retrain (0)
        ax.axhline(orig["jsd"] * 100, color="tab:gray", linestyle="--", linewidth=1, label="Original (untouched)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("unlearning time (s)")
    ax.set_ylabel("JSD on D_f vs Retrain (x100, lower is better; Retrain = 0)")
    if len(pts) > 1 and max(p[0] for p in pts) / max(min(p[0] for p in pts), 1e-9) > 20:
        ax.set_xscale("log")
    if len(pts) > 1 and max(p[1] for p in pts) / max(min(p[1] for p in pts), 1e-3) > 20:
        ax.set_yscale("log")  # a collapsed baseline (JSD in the hundreds) would flatten the rest
    if below_floor(rows):
        mark_below_floor(ax)
    finish_plot(fig, ax, path, title or "forgetting quality against unlearning time")
    return True


def mark_below_floor(ax, text: str = "Original below the CTR floor: these figures are noise") -> None:
    ax.text(0.5, 0.97, text, transform=ax.transAxes, ha="center", va="top", color="tab:red", fontsize=9, fontweight="bold",
            bbox=dict(facecolor="white", edgecolor="tab:red", alpha=0.9))


def spread_labels(fig, ax, step: float = 9.0, tries: int = 8) -> int:
    """Move point labels (annotations) that would overlap an earlier one down or up by
    `step` points until they are clear (methods with near-equal time and JSD otherwise
    print on top of each other). Returns how many labels moved."""
    from matplotlib.text import Annotation

    renderer = fig.canvas.get_renderer()
    placed, moved = [], 0
    for ann in [t for t in ax.texts if isinstance(t, Annotation)]:
        x0, y0 = ann.xyann
        for k in range(tries + 1):
            dy = 0 if k == 0 else step * ((k + 1) // 2) * (-1 if k % 2 else 1)
            ann.xyann = (x0, y0 + dy)
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                break
        moved += ann.xyann != (x0, y0)
        placed.append(ann.get_window_extent(renderer))
    return moved


def finish_plot(fig, ax, path, title: str) -> None:
    """Title, grid, layout, and an atomic PNG write (every plot of ours ends this way)."""
    import matplotlib.pyplot as plt

    from .files import atomic_path

    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    spread_labels(fig, ax)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def render_markdown(report: dict, plot: str | None = None) -> str:
    c = report["counts"]
    s = report["settings"]
    e = report["env"]
    from .audit import weak_setup

    aud = report.get("audit") or {}
    warns = [w for w in (below_floor(report["rows"]), weak_setup(aud.get("models") or {})) if w]
    if aud.get("nonmember_kind") == "test":
        warns.append("NOTE: the audit's non-members are the test samples, a later period than D_f: its attacks also detect "
                     "the time shift (no holdout in this run)")
    scen = report.get("scenario")
    calib = report.get("calibration") or {}
    if calib.get("note"):
        warns.append(calib["note"])
    parts = [
        f"# E2URec unlearning report: {s['dataset']}, backbone {s['backbone']}"
        + (f", scenario {s['scenario']}" if s.get("scenario", "random") != "random" else ""),
        "",
        *[x for w in warns for x in (f"**{w}.**", "")],
        *([f"Shilling scenario: {scen['n_fake']} fake users ({scen['fake_samples']} samples, D_f) promote items "
           f"{', '.join(map(str, scen['targets']))}; Target p(yes): the targets' mean p(yes) over every real test user "
           f"({scen.get('probes', '?')} probes: each user's latest test prompt asked about each target; the attack's effect).", ""]
          if scen and scen.get("n_fake") else []),
        *([f"Canary scenario: {scen['n_users']} canary users whose stars are coin flips ({scen['canary_samples']} samples); half "
           "of them are D_f, the other half held out (D_h): members and non-members from one pool, so only memorization "
           "separates them.", ""] if scen and scen.get("name") == "canary" else []),
        *calibration_lines(calib),
        "AUC, ACC, LogLoss on test; JSD (the authors' symmetric KL) and L2 on D_f against Retrain; all x100.",
        "Time(s): unlearning wall-clock (Retrain, SISA, RecEraser: their training time). #Params: trainable parameters.",
        "Bold: the best value of a column among the unlearning methods (Original, Retrain and the CTR floor take no part).",
        "",
        markdown_table(report["rows"]),
        "",
        f"Samples after the history filter: {c['samples_after_filter']}; used: {c['samples']} "
        f"(train {c['train']}, valid {c['valid']}, test {c['test']}); forgetting users {c['forget_users']} of "
        f"{c['train_users']}; |D_f| = {c['forget']}, |D_r| = {c['retain']}"
        + (f"; held out (D_h) {c['holdout_users']} users, {c['holdout']} samples, split by user into a calibration part "
           f"({c.get('calib_users', 0)} users, {c.get('calib', 0)} samples: what a request may tune its forgetting on) and the "
           f"audit's non-members ({c.get('audit_users', c['holdout_users'])} users, {c.get('audit', c['holdout'])} samples)."
           if c.get("holdout") else "."),
        "",
        f"Backbone {s['backbone']} ({report.get('backbone_params', 0):,} parameters). Device {e['device']}, torch {e['torch']}, "
        f"transformers {e.get('transformers', '?')}, Python {e.get('python', '?')}, seed {s['seed']}, git {e['git']}, "
        f"wall-clock of the whole job {report['total_s']:.0f} s.",
    ]
    if report.get("stages_s"):
        parts.append("Where it went: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in report["stages_s"].items()) + ".")
    for r in report["rows"]:
        if r.get("stages"):
            st = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
            parts.append(f"{r['method']} stages: {st}.")
        if r.get("diverged"):
            parts.append(f"{r['method']}: diverged ({r['diverged']}).")
    if plot:
        parts += ["", f"![D_f JSD against unlearning time]({plot})"]
    return "\n".join(parts) + "\n"


def _git_rev() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def env_info(device: str) -> dict:
    """The machine and versions a report was made on."""
    import torch
    import transformers

    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(device))
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return dict(device=dev, torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                git=_git_rev())


def flat_stages(report: dict) -> dict | None:
    """Where the job's wall clock went, in seconds, flat: load (data, models, checks),
    references (Original and Retrain trained or read back, the CTR floor; their evaluation
    excepted), E2URec's augment, cache and student, the other methods' unlearning, the
    evaluation of every model (the audit's losses come with it), the audit, and the write
    (the merged model and the rest of the total). They add up to `total_s`; the process
    start-up (imports) comes before the job's clock, the report files after it."""
    d = report.get("details") or {}
    ss, ev = d.get("stage_s") or {}, d.get("eval_s") or {}
    if not ss:
        return None
    refs = sum(v for k, v in ev.items() if k in ("Original", "Retrain"))
    e2u = next((r.get("stages") or {} for r in report["rows"] if r["method"] == "E2URec"), {})
    parts = {k: e2u.get(k, 0.0) for k in ("augment", "cache", "student")}
    other = ss.get("methods", 0.0) - (sum(ev.values()) - refs) - sum(parts.values())
    return dict(load=ss.get("prepare", 0.0) + ss.get("models", 0.0), references=ss.get("references", 0.0) - refs, **parts,
                other_methods=max(other, 0.0), evaluation=sum(ev.values()), audit=d.get("audit_s", 0.0),
                write=max(report["total_s"] - sum(ss.values()) - d.get("audit_s", 0.0), 0.0))


def calibration_lines(calib: dict) -> list[str]:
    """The report's paragraph on how much each method forgot, and why (calibrate.py)."""
    from .calibrate import MAX_LOSS_RISE

    per, teach = calib.get("methods") or {}, calib.get("teachers") or {}
    if not per and not teach:
        return []
    out = [f"Calibration (how much to forget, from {calib.get('calib_users', '?')} held-out users no audit reads; target: "
           f"LOSS-attack AUC {calib.get('target', 0.5)} on D_f vs them"
           + (", each loss less the CTR floor's refitted on D_r" if calib.get("reference") == "floor" else "")
           + (f"; a strength's guard: validation and D_r AUC each at most {calib.get('max_drop')} below the Original's, "
              f"validation log loss at most {MAX_LOSS_RISE} nats above"
              if per else "")
           + ("; a calibrated teacher sets the amount on E2URec's target" + (
               ", its strength (at most 1) only the guard's" if any(n in per for n in teach)
               else ", unguarded: its utility is in the table") if teach else "") + "):", ""]
    out += [f"- {name}: {c.get('verdict') or 'not calibrated: ' + c.get('skipped', '?')}." for name, c in teach.items()]
    out += [f"- {name}: {c['verdict']} ({c['passes']} forward passes, {c['seconds']:.1f} s)." for name, c in per.items()]
    return out + [""]


def write_report(out: Path, report: dict, audit_md: str, title: str, with_retrain: bool) -> bool:
    """report.json, report.csv, report.png (when there is a Retrain to plot against) and
    report.md into `out`, each atomically; returns whether the plot was drawn. Adds the flat
    stage times (`stages_s`, flat_stages) to `report`."""
    from .files import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    report["stages_s"] = flat_stages(report)
    rows = report["rows"]
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.csv", csv_table(rows))
    plotted = with_retrain and plot_jsd_time(rows, out / "report.png", title=title)
    md = render_markdown(report, plot="report.png" if plotted else None)
    md += "\n## Membership-inference audit\n\n" + audit_md
    if not with_retrain:
        md += ("\nNo Retrain in this run (--no-retrain): JSD and L2, which compare with Retrain, are not measured; the audit "
               "above is the evidence of forgetting.\n")
    write_text_atomic(out / "report.md", md)
    return plotted


def settings_of(cfg, methods: list[str], backbone_dir, lr: float) -> dict:
    """A report's settings: the config's own fields, with the defaults this run resolved (the
    methods, the backbone, the full fine-tunes' learning rate `lr`, ...)."""
    from .config import max_samples, split_seed
    from .request import _count_of

    flat = {k: v for k, v in cfg.flat().items() if k != "out"}
    for k in ("forget_users", "holdout_users"):  # who asked to be forgotten is the operator's record only (request.py)
        if flat.get(k) is not None:
            flat[k] = _count_of(flat[k])
    request = cfg.is_request
    return flat | dict(backbone=cfg.run.backbone or ("tiny" if not request else Path(backbone_dir).name),
                       backbone_dir=str(backbone_dir), max_samples=max_samples(cfg), split_seed=split_seed(cfg),
                       forget_ratio=None if request else cfg.data.forget_ratio, methods=methods, lr=lr,
                       warmup=cfg.finetune.warmup if cfg.finetune.lr_schedule == "linear" else 0.0)

