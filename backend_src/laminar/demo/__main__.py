"""`python -m laminar.demo --out DIR [--force] [--random]`: write the demo checkpoint, trained on
its corpus (a CPU minute or two; a no-op when DIR already holds it), or untrained with --random."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from laminar.demo.checkpoint import write_demo_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laminar.demo", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--force", action="store_true",
                        help="rewrite even if complete, or if the directory holds other files")
    parser.add_argument("--random", action="store_true",
                        help="keep the random initial weights (seconds; the text is gibberish)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = write_demo_checkpoint(args.out, force=args.force, trained=not args.random)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"demo checkpoint ready at {out} ({time.perf_counter() - start:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
