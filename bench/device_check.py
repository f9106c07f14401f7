"""The CUDA path in one command: `python bench/device_check.py` on a machine with one CUDA GPU
(at most ~8 minutes on an H100-class GPU), one JSON out. Every check goes through tunelab's
public API, the one the CLI uses (``train.run``, ``plan.plan``, ``predict.score_run``):

- methods: every method for ``--steps`` steps on the encoder (MiniLM) and on the decoder
  (SmolLM2, classification as text) in ``--precision`` (bf16): ok / refused / failed, with
  the reason, steps/s, peak memory, and whether predict's reload reproduces the test accuracy;
- qlora: LoRA on the decoder's 4-bit base (bitsandbytes), trained and reloaded;
- fp16: LoRA in fp16 autocast with loss scaling (a T4 / V100's precision; refused on a CPU);
- plan: ``tunelab plan``'s training peak against the run's measured peak (on CUDA
  ``torch.cuda.max_memory_allocated`` above the level before the model) for full, LoRA and
  QLoRA on the decoder;
- trainer: tunelab against the plain HF Trainer recipe (``bf16=True``, the same model, data,
  batch and steps) in training examples per second, full and LoRA on the encoder.

``--device cpu --tiny`` runs the same checks on tiny random models (a 2-layer BERT and Llama
with the packaged tokenizers) on the CPU in about a minute: the suite runs it
(tests/test_device_check.py) so the script cannot rot. A check that cannot run (a package
missing, no GPU for fp16) is recorded with its reason; the script fails only on its own bugs.

The GPU machine of this workplace has no network and its own torch / transformers / peft /
accelerate: install tunelab there with ``pip install --no-deps -e .`` and bring what it lacks
as wheels (README, "The CUDA check").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny models of the suite (--tiny)

BUDGET = {  # overrides every check's runs share
    "data.max_train_examples": 256, "data.max_eval_examples": 64, "train.batch_size": 8,
    "train.eval_batch_size": 32, "tracker": "none", "train.log_every": 5,
}  # fmt: skip


def machine() -> dict:
    from importlib import metadata

    from tunelab.measure import cpu_model
    from tunelab.precision import cpu_bf16_flag

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    gpu = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cpu_native_bf16": cpu_bf16_flag() or "no",
        "gpu": torch.cuda.get_device_name() if gpu else None,
        "gpu_bf16": torch.cuda.is_bf16_supported() if gpu else None,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "cuda": torch.version.cuda,
        "packages": {p: version(p) for p in ("torch", "transformers", "peft", "accelerate",
                                             "bitsandbytes", "optuna", "datasets", "tunelab")},
    }  # fmt: skip


def outcome(fn, *args) -> dict:
    """``fn(*args)``'s result as ``{"status": "ok", ...}``; a tunelab refusal as ``refused``
    with its one line; anything else as ``failed`` with the exception and where it rose."""
    from tunelab.errors import TunelabError

    t = time.perf_counter()
    try:
        out = {"status": "ok", **fn(*args)}
    except TunelabError as e:  # a crash inside a run comes back with its traceback file
        crashed = "(traceback: " in str(e)
        out = {"status": "failed" if crashed else "refused", "reason": str(e)[:400]}
    except Exception as e:  # the check records what broke and goes on
        where = traceback.extract_tb(e.__traceback__)[-1]
        out = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}",
               "at": f"{where.filename}:{where.lineno}"}  # fmt: skip
    out["seconds"] = round(time.perf_counter() - t, 2)
    return out


class Check:
    """The models, device, precision and output folder every check shares."""

    def __init__(self, args, out: Path):
        self.device, self.precision, self.steps, self.out = (
            args.device, args.precision, args.steps, out)  # fmt: skip
        self.encoder, self.decoder = args.encoder, args.decoder
        if args.tiny:
            self.encoder, self.decoder = tiny_models(out)

    def config(self, model: str, task: str, method: str, *extra: str):
        from tunelab.config import load_config

        over = {
            **BUDGET,
            "model.name": model,
            "task": task,
            "method.name": method,
            "train.max_steps": self.steps,
            "train.device": self.device,
            "train.mixed_precision": self.precision,
            "out_dir": str(self.out / "runs"),
        }
        return load_config(None, [f"{k}={v}" for k, v in over.items()] + list(extra))

    def run(self, model: str, task: str, method: str, *extra: str) -> dict:
        from tunelab.inference import score_run
        from tunelab.rundir import run_dir_for
        from tunelab.train import run

        cfg = self.config(model, task, method, *extra)
        rec = run(cfg, overwrite=True)
        again = score_run(run_dir_for(cfg), device=self.device)
        return {
            "precision": rec.env.precision, "weights": rec.env.weights,
            "steps_per_s": round(rec.steps / max(rec.timing.train_s, 1e-9), 3),
            "examples_per_s": round(rec.timing.examples_per_s, 2),
            "peak_bytes": rec.memory.peak_bytes, "memory_kind": rec.memory.kind,
            "test_accuracy": rec.test.accuracy,
            "reload_same_accuracy": again.accuracy == rec.test.accuracy,
        }  # fmt: skip

    def planned_vs_measured(self, method: str, *extra: str) -> dict:
        from tunelab.planning import plan

        cfg = self.config(self.decoder, "causal-lm", method, *extra)
        est = plan(cfg, [method], device=self.device).estimates[0]
        if est.error:
            raise RuntimeError(f"plan: {est.error}")
        measured = self.run(self.decoder, "causal-lm", method, *extra)["peak_bytes"]
        return {"planned_bytes": est.peak, "measured_bytes": measured,
                "planned_over_measured": round(est.peak / max(measured, 1), 3)}  # fmt: skip

    def trainer(self, method: str) -> dict:
        """tunelab's examples/s against the plain Trainer recipe's on the same work."""
        ours = self.run(self.encoder, "classification", method)["examples_per_s"]
        theirs = trainer_examples_per_s(self.config(self.encoder, "classification", method))
        return {"tunelab_examples_per_s": ours, "trainer_examples_per_s": round(theirs, 2),
                "ratio": round(ours / theirs, 3)}  # fmt: skip


def trainer_examples_per_s(cfg) -> float:
    """The HF Trainer (``bf16=True`` where the run is bf16) on the run's own training rows,
    with peft's model from the same method, for the same number of steps."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from tunelab.models import load_model, load_tokenizer
    from tunelab.precision import choose_precision
    from tunelab.tasks import prepare_data

    data = prepare_data(cfg)
    tok = load_tokenizer(cfg.model.name)
    rows = [
        {"input_ids": ids, "label": y}
        for ids, y in zip(data.train.input_ids, data.splits.train.labels, strict=True)
    ]
    set_seed(cfg.train.seed)
    model = cfg.method.prepare(load_model(cfg.model.name, data.splits.label_names,
                                          tok.pad_token_id))  # fmt: skip
    mp = choose_precision(cfg.train.mixed_precision, cfg.train.device)[0]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=cfg.train.batch_size,
            max_steps=cfg.train.max_steps, learning_rate=cfg.train.lr or cfg.method.lr,
            bf16=mp == "bf16", fp16=mp == "fp16", use_cpu=cfg.train.device == "cpu",
            train_sampling_strategy="group_by_length", report_to="none", save_strategy="no",
            disable_tqdm=True, logging_steps=10**6, seed=cfg.train.seed,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(tok))  # fmt: skip
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    return cfg.train.max_steps * cfg.train.batch_size / seconds


def tiny_models(out: Path) -> tuple[str, str]:
    """A 2-layer BERT (MiniLM's tokenizer) and a 2-layer Llama (SmolLM2's), random weights."""
    from archs import save_tiny

    folders = []
    for family in ("bert", "llama"):
        folder = out / f"tiny-{family}"
        if not (folder / "config.json").exists():
            save_tiny(family, folder)
        folders.append(str(folder))
    return folders[0], folders[1]


def main(argv: list[str] | None = None) -> dict:
    from tunelab.methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"],
                    default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    ap.add_argument("--precision", default="bf16", help="train.mixed_precision of the runs")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (the CPU dry run)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--decoder", default="smollm2")
    ap.add_argument("--out", help="result JSON (default bench/results/device-check-DATE.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        c = Check(args, Path(tmp))
        result = {"machine": machine(), "device": args.device, "precision": args.precision,
                  "tiny": args.tiny, "steps": args.steps, "encoder": c.encoder,
                  "decoder": c.decoder, "methods": {}}  # fmt: skip
        for name, model, task in (("encoder", c.encoder, "classification"),
                                  ("decoder", c.decoder, "causal-lm")):  # fmt: skip
            result["methods"][name] = {m: outcome(c.run, model, task, m) for m in METHODS}
        q4 = "model.quantize=4bit"
        result["qlora"] = outcome(c.run, c.decoder, "causal-lm", "lora", q4)
        result["fp16"] = outcome(c.run, c.encoder, "classification", "lora",
                                 "train.mixed_precision=fp16")  # fmt: skip
        result["plan"] = {
            "full": outcome(c.planned_vs_measured, "full"),
            "lora": outcome(c.planned_vs_measured, "lora"),
            "qlora": outcome(c.planned_vs_measured, "lora", q4),
        }
        result["trainer"] = {m: outcome(c.trainer, m) for m in ("full", "lora")}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    day = result["date"][:10]
    path = Path(args.out or ROOT / "bench" / "results" / f"device-check-{args.device}-{day}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))
    print(f"written: {path}")
    return result


def summary(r: dict) -> str:
    lines = [f"device check on {r['machine']['gpu'] or r['machine']['cpu']} ({r['device']}, "
             f"{r['precision']}), {r['wall_s']} s"]  # fmt: skip
    for model, rows in r["methods"].items():
        for m, o in rows.items():
            lines.append(f"  {model:8} {m:9} {o['status']:8} {o.get('reason', '')[:100]}")
    for key in ("qlora", "fp16"):
        lines.append(f"  {key:18} {r[key]['status']:8} {r[key].get('reason', '')[:100]}")
    for m, o in r["plan"].items():
        lines.append(f"  plan {m:13} {o['status']:8} {o.get('planned_over_measured', '')}")
    for m, o in r["trainer"].items():
        lines.append(f"  trainer {m:10} {o['status']:8} {o.get('ratio', o.get('reason', ''))}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
