"""JSON and markdown writers for eval results (accuracy runs, the robustness table, the resolution benchmark).

Every report records what produced it: `environment()` gives device kind and count, backend, JAX/Flax versions, date
and the command line, so a committed table can be traced back to a run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from typing import Any, Sequence


def environment() -> dict[str, Any]:
    """Device, software versions, date and command of this process."""
    import flax
    import jax

    dev = jax.devices()[0]
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
            "process_count": jax.process_count(), "jax": jax.__version__, "flax": flax.__version__,
            "python": platform.python_version(), "command": " ".join(shlex.quote(a) for a in sys.argv)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / jax scalars
        return x.item()
    if isinstance(x, float) and x != x:  # NaN is not JSON
        return None
    return x


def write_json(path: str, obj: Any) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(obj), f, indent=1)
        f.write("\n")
    return path


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub markdown table; floats with `digits` decimals, None as '-'."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def provenance(env: dict) -> str:
    return (f"{env['date']}, {env['device']} x{env['device_count']} ({env['backend']}), jax {env['jax']}, "
            f"flax {env['flax']}, python {env['python']}.\n\nCommand: `{env['command']}`\n")


def write_markdown(path: str, title: str, body: str, env: dict | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {title}\n\n")
        if env:
            f.write(provenance(env) + "\n")
        f.write(body)
    return path
