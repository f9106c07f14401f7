"""The ``tunelab`` command: parse, call, print. No logic lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from tunelab.api import FLAGS
from tunelab.errors import TunelabError

# the convenience flags of run / compare / tune (their help is the config field's docstring)
RUN_FLAGS = ["model", "dataset", "text_column", "text_pair_column", "label_column",
             "max_train_examples", "epochs", "task", "out", "tracker"]  # fmt: skip
PLAN_FLAGS = ["batch_size", "max_length", "precision"]


def _common(p: argparse.ArgumentParser) -> None:
    from tunelab.config import describe

    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=3e-4 method=lora method.r=16 (every key: "
        "`tunelab config`; a leading *.yaml argument is read as the config file)",
    )
    p.add_argument("--config", help="YAML config file with overrides of the defaults")
    for flag in RUN_FLAGS:
        key = FLAGS[flag]
        p.add_argument("--" + flag.replace("_", "-"), help=f"{describe(key)} [{key}]")
    p.add_argument("--overwrite", action="store_true", help="replace existing runs")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs, skip done")


def _tune_flags(p: argparse.ArgumentParser) -> None:
    from tunelab.config import describe

    p.add_argument("--space", help=f"{describe('tune.shared')} Comma-separated. [tune.shared]")
    p.add_argument("--storage", help=f"{describe('tune.storage')} [tune.storage]")
    p.add_argument(
        "--workers", type=int, default=1, help="processes on this machine working on the studies"
    )


def _plan_flags(p: argparse.ArgumentParser) -> None:
    from tunelab.config import describe
    from tunelab.methods import METHODS

    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--config", help="YAML config file with overrides of the defaults")
    for flag in ("model", "dataset", "task", "epochs", "out"):
        key = FLAGS[flag]
        p.add_argument("--" + flag, help=f"{describe(key)} [{key}]")
    for flag in PLAN_FLAGS:
        key = FLAGS[flag]
        p.add_argument("--" + flag.replace("_", "-"), help=f"{describe(key)} [{key}]")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--examples", type=int, help="training examples (default: the data's)")
    p.add_argument("--memory", help="memory to fit in, e.g. 16GB (default: this machine's)")
    p.add_argument("--time", help="training time to fit in, e.g. 2h, 90m")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: this machine's")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="training processes (GPUs): memory per process, DDP unless --fsdp",
    )
    p.add_argument("--fsdp", action="store_true",
                   help="the processes shard the model (train.fsdp=true)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="time a few real steps of each method here first (kept in OUT/plan-calibration.json)",
    )


def cmd_plan(args) -> None:
    from tunelab import api
    from tunelab.planning import table

    cfg = _load(args)
    cfg.train.fsdp = cfg.train.fsdp or args.fsdp
    p = api.plan_config(cfg, args.methods, args.examples, args.memory, args.time, args.device,
                        args.calibrate, args.processes)  # fmt: skip
    print(p.to_json() if args.json else table(p))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tunelab",
        description="Run, measure and compare fine-tuning methods on transformer models.",
    )
    debug = "on an error, print the full traceback (its causes too); or TUNELAB_DEBUG=1"
    ap.add_argument("--debug", action="store_true", help=debug)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="train one method, write a run folder")
    _common(p)
    p = sub.add_parser("compare", help="run several methods on the same data and tabulate")
    _common(p)
    p.add_argument("--methods", default="full,llrd,lora,prompt", help="comma-separated, or all")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (mean ± std)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument(
        "--train-sizes",
        metavar="N,N,...",
        help="run every method at each training-set size (e.g. 100,300,1000,3000,all; nested "
        "subsets, same validation and test): the report plots accuracy against size and "
        "checks the article's table",
    )
    p.add_argument(
        "--tune",
        **{"type": int, "nargs": "?", "const": 0, "metavar": "N"},
        help="tune each method first (N configurations each, default tune.trials; see "
        "`tunelab tune`), then compare every method at its own best configuration",
    )
    _tune_flags(p)
    p = sub.add_parser("tune", help="search each method's hyperparameters (Optuna)")
    _common(p)
    p.add_argument("--methods", default="full,llrd,lora,prompt", help="comma-separated, or all")
    p.add_argument("--trials", type=int, help="trials per method, the same for every method")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    _tune_flags(p)
    p = sub.add_parser(
        "plan",
        help="memory, FLOPs and time of each method before training (no weights loaded)",
    )
    _plan_flags(p)
    sub.add_parser("methods", help="list methods, their knobs and defaults")
    p = sub.add_parser("config", help="print every config key with its default and meaning")
    p = sub.add_parser("predict", help="classify texts with a finished run")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="+")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=0,
        help="causal-LM runs: also generate this many tokens after each prompt (greedy)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: a CUDA GPU if there is one")
    p = sub.add_parser("export", help="a plain HF model folder from a run (adapters merged)")
    p.add_argument("run_dir")
    p.add_argument("out")
    p = sub.add_parser("report", help="build report.html + report.md from run records")
    p.add_argument("runs_dir")
    p.add_argument("-o", "--output", help="HTML path (default RUNS_DIR/report.html)")
    return ap


def _load(args):
    """The configuration from the command line: api.load with the flags given."""
    from tunelab import api

    flags = {flag: getattr(args, flag, None) for flag in api.FLAGS}
    tune = getattr(args, "tune", None)
    if tune:  # --tune N: N trials (a bare --tune: as configured)
        flags["trials"] = tune
    return api.load(args.overrides, config=args.config, **flags)


def cmd_methods() -> None:
    """Every method: what it does, its knobs with defaults and docs (from the dataclasses)."""
    from tunelab.fields import choices_text, field_docs
    from tunelab.methods import METHODS, knobs

    for name, cls in METHODS.items():
        print(f"{name}: {cls.description}")
        print(f"    default learning rate {cls.lr:g} (train.lr overrides it)")
        docs = field_docs(cls)
        for key, value in knobs(cls()).items():
            allowed = choices_text(cls, key)
            print(f"    method.{key} = {value!r}{f' ({allowed})' if allowed else ''}")
            print(f"        {docs.get(key, '')}")
        if cls.note:
            print(f"    note: {cls.note}")
        print()


def cmd_config() -> None:
    """Every config key with its default, allowed values and meaning (from the dataclasses)."""
    from tunelab.config import SECTIONS
    from tunelab.fields import choices_text, field_docs
    from tunelab.methods import method_dict
    from tunelab.tasks import TASKS

    for section, cls in SECTIONS.items():
        obj = cls()
        for key, doc in field_docs(cls).items():
            allowed = choices_text(cls, key)
            if (section, key) == ("", "task"):  # the tasks registry is the list
                allowed = "one of " + ", ".join(TASKS)
            value = getattr(obj, key)
            if key == "method" and not section:  # the built method, as a config names it
                value = method_dict(value)
            print(f"{section}{key} = {value!r}{f' ({allowed})' if allowed else ''}")
            print(f"    {doc}")


def _score(rec) -> str:
    t = rec.test
    if t is not None and t.accuracy is not None:
        return f"test accuracy {100 * t.accuracy:.2f}%, macro-F1 {100 * t.macro_f1:.2f}%"
    if t is not None:
        return f"test loss {t.loss:.4f}, perplexity {t.perplexity or 0:.2f}"
    return f"best validation {rec.best_validation}"


def _print_run(rec) -> None:
    if rec.ok:
        print(f"  {rec.name}: {_score(rec)}, train {rec.timing.train_s:.1f}s", flush=True)
    else:
        print(f"  {rec.name}: {rec.status.upper()}: {rec.reason}", flush=True)


def cmd_tune(args) -> dict:
    """Tune, print each method's best configuration, and (unless --no-report) the report."""
    from tunelab import api
    from tunelab.comparison import parse_methods

    cfg = _load(args)
    methods = parse_methods(args.methods)
    tc = cfg.tune
    how = f"{tc.trials} trials each"
    if tc.pruner == "halving":
        how = f"a bracket of {tc.trials} configurations each (successive halving, eta {tc.eta})"
    print(f"tuning {', '.join(methods)}: {how} -> {cfg.out_dir}")
    best = api.tune_config(cfg, methods, args.workers, report=False, overwrite=args.overwrite)
    for method, b in best.methods.items():
        t = b.trials
        value = "-" if b.best_value is None else f"{b.best_value:.4f}"
        print(
            f"{method}: best validation {value} with {b.best_params} "
            f"({t.complete} complete, {t.pruned} pruned, {t.fail} failed; "
            f"{b.examples:,} examples, {b.seconds:.0f} s)"
        )
    if args.cmd == "tune" and not args.no_report:
        html, _ = api.build_report(cfg.out_dir)
        print(f"report: {html}")
    return best


def cmd_compare(args) -> None:
    from tunelab import api
    from tunelab.comparison import parse_methods, parse_sizes, runs_once

    if args.train_sizes:
        parse_sizes(args.train_sizes)  # a bad list is said before any tuning
    tuned = cmd_tune(args) if args.tune is not None else None
    cfg = _load(args)
    methods = parse_methods(args.methods)
    stopped = [m for m in methods if runs_once(tuned, m)]
    if stopped and args.seeds > 1:
        print(f"raced out or failed in tuning, run once: {', '.join(stopped)}")
    c = api.compare_config(cfg, methods, args.seeds, args.train_sizes, tuned,
                           not args.no_report, args.overwrite, args.resume, _print_run)  # fmt: skip
    print(c.markdown)
    print("\n" + c.recommendation)
    print(f"\ntable: {c.out / 'comparison.md'} (and .csv)")
    if c.report:
        print(f"report: {c.report} (and report.md)")
    if c.failed:  # the others ran and are reported; the command still says it did not all work
        raise TunelabError(
            f"{len(c.failed)} of {len(c.records)} runs failed "
            f"({', '.join(r.name for r in c.failed)}): the reasons are above, in the report "
            f"and in each run's result.json and error.txt"
        )


def cmd_run(args) -> None:
    from tunelab.files import is_main
    from tunelab.rundir import run_dir_for
    from tunelab.train import run

    cfg = _load(args)
    rec = run(cfg, overwrite=args.overwrite, resume=args.resume)
    if is_main():  # one line, not one per process
        where = run_dir_for(cfg)
        print(f"{rec.name}: {_score(rec)}, train {rec.timing.train_s:.1f}s -> {where}")


def cmd_predict(args) -> None:
    from tunelab import api

    for row in api.predict(args.run_dir, args.texts, args.max_new_tokens, args.device):
        print(json.dumps(row))


def cmd_export(args) -> None:
    from tunelab import api

    print(f"exported: {api.export(args.run_dir, args.out)}")


def cmd_report(args) -> None:
    from tunelab import api

    html, mdr = api.build_report(args.runs_dir, args.output)
    print(f"report: {html} (and {mdr.name})")


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "tune": cmd_tune,
    "plan": cmd_plan,
    "methods": lambda args: cmd_methods(),
    "config": lambda args: cmd_config(),
    "predict": cmd_predict,
    "export": cmd_export,
    "report": cmd_report,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line as parsed (argparse exits with its usage message on a bad one)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # before or after the command
    # KEY=VALUE overrides may come before or after the flags (argparse alone stops at a flag)
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if extra and (not hasattr(args, "overrides") or any("=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        COMMANDS[args.cmd](args)
    except TunelabError as e:
        if args.debug or os.environ.get("TUNELAB_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"tunelab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:  # guard.Interrupted: a checkpoint was written first
        print("tunelab: interrupted; continue with the same command and --resume", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
