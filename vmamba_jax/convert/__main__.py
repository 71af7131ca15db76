"""Convert an official checkpoint into a saved Flax (Orbax) checkpoint.

    python -m vmamba_jax.convert --model vmamba_tiny_s1l8 --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth \
        --out converted/vmamba_tiny_s1l8 [--ema] [--set num_classes=1000]

Writes <out>/params (Orbax StandardCheckpointer) and <out>/model.json (model name and overrides), which
`vmamba_jax.convert.load_converted(out)` reads back as (model, variables).
"""

from __future__ import annotations

import argparse
import ast
import sys

from vmamba_jax.convert.core import CheckpointMismatchError, load_torch_checkpoint
from vmamba_jax.convert.saved import save_converted
from vmamba_jax.models import create_model


def _parse_override(text: str):
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registered model name (vmamba_jax.list_models())")
    p.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin, .safetensors or .npz")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ema", action="store_true", help="take 'model_ema' instead of 'model'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="create_model override")
    args = p.parse_args(argv)
    overrides = dict(_parse_override(s) for s in args.set)
    model = create_model(args.model, **overrides)
    try:
        variables = load_torch_checkpoint(args.checkpoint, model, ema=args.ema)
    except CheckpointMismatchError as e:
        print(e, file=sys.stderr)
        return 2
    path = save_converted(args.out, variables, args.model, overrides)
    print(f"saved {args.model} ({sum(x.size for x in __import__('jax').tree_util.tree_leaves(variables)):,} "
          f"params) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
