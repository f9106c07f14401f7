"""tunelab: run, measure and compare fine-tuning methods.

From Python, the commands are functions with the same arguments (see ``tunelab.api``)::

    import tunelab
    cmp = tunelab.compare("full,lora", model="minilm", out="runs", epochs=1)
    cmp.table  # a pandas DataFrame; in Jupyter, ``cmp`` shows the report inline
"""

import logging

# bitsandbytes on a CPU with AVX512-BF16 warns at import (peft imports it) that an optional
# kernel from the Hub is missing; it falls back, and QLoRA runs keep its training kernel anyway
# (models.same_kernels_everywhere): one line of noise on every command
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from tunelab.api import (  # noqa: E402 (after the logger)
    Comparison,
    build_report,
    compare,
    export,
    load,
    plan,
    predict,
    run,
    tune,
)
from tunelab.errors import TunelabError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Comparison", "TunelabError", "build_report", "compare", "export", "load", "plan",
           "predict", "run", "tune"]  # fmt: skip
