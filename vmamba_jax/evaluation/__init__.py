"""Evaluation: the sharded eval loop (padded + masked last batch, top-1/top-5/loss), weight loading for eval,
JSON/markdown writers, plots and the resolution-scaling benchmark helpers."""

from vmamba_jax.evaluation.loop import Evaluator, evaluate  # noqa: F401
from vmamba_jax.evaluation.metrics import finalize, masked_sums  # noqa: F401
from vmamba_jax.evaluation.report import markdown_table, write_json, write_markdown  # noqa: F401
