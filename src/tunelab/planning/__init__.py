"""`tunelab plan`: what each method will cost on a model, data and machine, answered before
training. ``trace`` (the model without weights), ``rate`` (time), ``estimate`` (one method's
cost, the whole plan, the suggestion), ``text`` (units and the table); ``costs`` holds the
typed results."""

from tunelab.planning.costs import Cost, Plan
from tunelab.planning.estimate import plan, suggest
from tunelab.planning.rate import peak_flops
from tunelab.planning.text import gib, parse_duration, parse_size, table
from tunelab.planning.trace import (
    build,
    eval_working_set,
    in_nf4,
    model_config,
    state_bytes,
    trace,
    training_batch,
)

__all__ = [
    "Cost",
    "Plan",
    "build",
    "eval_working_set",
    "gib",
    "in_nf4",
    "model_config",
    "parse_duration",
    "parse_size",
    "peak_flops",
    "plan",
    "state_bytes",
    "suggest",
    "table",
    "trace",
    "training_batch",
]
