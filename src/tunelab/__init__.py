"""tunelab: run, measure and compare fine-tuning methods.

From Python, the commands are functions with the same arguments (see ``tunelab.api``)::

    import tunelab
    cmp = tunelab.compare("full,lora", model="minilm", out="runs", epochs=1)
    cmp.table  # a pandas DataFrame; in Jupyter, ``cmp`` shows the report inline
"""

from tunelab.api import Comparison, build_report, compare, export, load, plan, predict, run, tune
from tunelab.errors import TunelabError

__version__ = "0.1.0"
__all__ = ["Comparison", "TunelabError", "build_report", "compare", "export", "load", "plan",
           "predict", "run", "tune"]  # fmt: skip
