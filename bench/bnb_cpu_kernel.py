"""Why QLoRA runs keep bitsandbytes' training kernel on every CPU (models.same_kernels_everywhere):
on a CPU with AVX512-BF16, bitsandbytes (0.49+) repacks a 4-bit layer's weights in place at
its first eval-mode forward without gradients, for another kernel. This measures, on one
128 -> 64 NF4 layer with bf16 compute: how far that kernel's outputs are from the training
kernel's, whether a training step still works after it, and whether the repacking refuses a
layer narrower than its tiles (32 -> 32); then the same with the fix applied. On a CPU
without AVX512-BF16 neither side repacks. Writes bench/results/bnb-cpu-kernel-<date>.json.

    python bench/bnb_cpu_kernel.py
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch


def layer(n_in: int, n_out: int, fixed: bool):
    import bitsandbytes as bnb

    from tunelab.models import same_kernels_everywhere

    torch.manual_seed(0)
    lin = bnb.nn.Linear4bit(n_in, n_out, compute_dtype=torch.bfloat16, quant_type="nf4").to("cpu")
    return same_kernels_everywhere(lin) if fixed else lin


def measure(fixed: bool) -> dict:
    torch.manual_seed(1)
    x = torch.randn(3, 128)
    lin = layer(128, 64, fixed)
    train_out = lin(x.clone().requires_grad_()).detach()  # the training kernel
    lin.eval()
    with torch.no_grad():
        eval_out = lin(x)
    packed = bool(getattr(lin.weight.quant_state, "packing_format_for_cpu", False))
    lin.train()
    try:
        xg = x.clone().requires_grad_()
        lin(xg).sum().backward()
        step_after_eval = "ok"
    except RuntimeError as e:
        step_after_eval = f"RuntimeError: {str(e)[:120]}"
    narrow = layer(32, 32, fixed).eval()
    try:
        with torch.no_grad():
            narrow(torch.randn(3, 32))
        narrow_eval = "ok"
    except (RuntimeError, AssertionError) as e:
        narrow_eval = f"{type(e).__name__}: {str(e)[:120]}"
    return {
        "repacked_at_eval": packed,
        "max_abs_diff_eval_vs_training_kernel": float((eval_out - train_out).abs().max()),
        "training_step_after_eval": step_after_eval,
        "eval_of_a_32x32_layer": narrow_eval,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    import bitsandbytes as bnb

    from tunelab.measure import cpu_model
    from tunelab.precision import cpu_bf16_flag

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": {
            "cpu": cpu_model(),
            "native_bf16": cpu_bf16_flag() or "no",
        },  # fmt: skip
        "bitsandbytes": bnb.__version__,
        "torch": torch.__version__,
        "as_bitsandbytes_does": measure(fixed=False),
        "with_same_kernels_everywhere": measure(fixed=True),
    }
    path = Path(__file__).parent / "results" / f"bnb-cpu-kernel-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
