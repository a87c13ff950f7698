"""Command line: python -m e2urec_fast.unlearn

Parses, calls `e2urec_fast.api.run_guarded`, prints. The options are generated from the
typed config (config.py): `--help` lists the ones a user needs, `--help-all` every field;
any field is also `--set NAME=VALUE` (or `GROUP.NAME`). A deletion request is
`--forget-users` with `--original` or `--previous` (and `--no-retrain`, `--merge`); without
them the job is the paper's benchmark on a random `--forget-ratio` of the train users.
Writes report.json / report.md / report.csv and the adapter (and original/, merged/) into --out.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .config import CONFIG_PRESETS, GROUPS, all_fields, from_fields, parse_assignments, parse_value, preset
from .errors import EXIT_USER_ERROR, UserError
from .request import redact_users

DESCRIPTION = ("Make an LLM recommender forget the forgetting users' training data with E2URec (LoRA student, remembering and "
               "forgetting teachers) and compare it with Original and Retrain.")
TITLES = dict(data="data", request="deletion request (without these: the paper's benchmark on a random --forget-ratio of users)",
              run="model and run", bench="seeds", finetune="Original / Retrain training", student="E2URec",
              speed="speed switches of the fast path", baselines="baselines",
              calibration="calibration: how much to forget, from held-out users (calibrate.py)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad input
        raise UserError(message)


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The parser, generated from the config's fields: with `full`, every field's help shown
    (`--help-all`); else only the user-facing ones (the others parse, unlisted)."""
    ap = _Parser(prog="python -m e2urec_fast.unlearn", description=DESCRIPTION, add_help=False,
                 epilog=None if full else "Every other setting (speed and ablation switches, baselines, schedules): --help-all.")
    g = ap.add_argument_group("options")
    g.add_argument("-h", "--help", action="store_true", help="this help")
    g.add_argument("--help-all", action="store_true", help="every option, the speed and ablation switches included")
    g.add_argument("--preset", choices=list(CONFIG_PRESETS), default=None,
                   help="named settings: default, or authors (the authors' hyper-parameters and objective: student lr 1e-3, "
                   "1000 steps, full-vocabulary KL, random batches, AdamW weight decay 0.01 without clipping; baselines "
                   "weight 0.2, lr 5e-5, 3000 steps, Bad-T 2400)")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any config field (see --help-all), e.g. --set kernel_backend=torch; repeatable")
    g.add_argument("--authors-settings", action="store_true", help="same as --preset authors" if full else argparse.SUPPRESS)
    g.add_argument("--no-batch-fusion", action="store_true", help="same as --batch-fusion off" if full else argparse.SUPPRESS)
    groups = {name: ap.add_argument_group(TITLES[name]) for name in GROUPS}
    for name, (group, f) in all_fields().items():
        m = f.metadata
        show = full or m["shown"]
        text = (m["help"] + (f" (default: {f.default})" if f.default not in (None, False) else "")).replace("%", "%%") if show \
            else argparse.SUPPRESS
        flag = "--" + name.replace("_", "-")
        if m["type"] is bool:
            groups[group].add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            groups[group].add_argument(flag, dest=name, type=_typed(name), choices=m["choices"], metavar=m["metavar"],
                                       default=argparse.SUPPRESS, help=text,
                                       action=_Once if name in ("forget_users", "holdout_users") else "store")
    return ap


class _Once(argparse.Action):
    """A list of users given twice is refused (argparse would keep the last list without a word)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if hasattr(namespace, self.dest):
            raise UserError(f"{option_string} given twice ({getattr(namespace, self.dest)!r} and {values!r}); give it once")
        setattr(namespace, self.dest, values)


def _typed(name: str):
    conv = lambda text: parse_value(name, text)  # noqa: E731
    conv.__name__ = all_fields()[name][1].metadata["type"].__name__
    return conv


def config_from_argv(argv) -> tuple:
    """(Config, the field names given explicitly) from the command line; conflicts between a
    preset and a flag it sets are refused (drop one or the other)."""
    ns = vars(build_parser().parse_args(argv))
    known = all_fields()
    values = {k: v for k, v in ns.items() if k in known}
    values |= parse_assignments(ns["set"]) | ({"no_batch_fusion": True} if ns["no_batch_fusion"] else {})
    name = ns["preset"] or ("authors" if ns["authors_settings"] else "default")
    if ns["preset"] and ns["authors_settings"] and ns["preset"] != "authors":
        raise UserError(f"--authors-settings and --preset {ns['preset']} conflict")
    clash = sorted(k for k, v in CONFIG_PRESETS[name].items() if k in values and values[k] != v)
    if clash:
        given = "--authors-settings" if ns["authors_settings"] and not ns["preset"] else f"--preset {name}"
        raise UserError(f"{given} conflicts with {', '.join('--' + k.replace('_', '-') for k in clash)} "
                        "(the preset sets them; drop one or the other)")
    return from_fields(preset(name), **values), set(values)


def main(argv=None) -> int:
    from .train import DivergedError

    argv = sys.argv[1:] if argv is None else list(argv)
    out = Path("e2urec_out")
    try:
        if "--help-all" in argv or "-h" in argv or "--help" in argv:
            print(build_parser(full="--help-all" in argv).format_help())
            return 0
        cfg, _ = config_from_argv(argv)
        out = Path(cfg.run.out)
        from . import card
        from .api import run_guarded

        # for the model cards of what is handed out: the users as a count (who asked is the operator's record only)
        card.COMMAND = "python -m e2urec_fast.unlearn " + shlex.join(redact_users(argv))
        try:
            run_guarded(cfg)
        finally:
            card.COMMAND = None  # (a later forget() in this process made through the API)
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
