#!/usr/bin/env python3
"""The main job's accuracy in bf16 against f32 on one GPU (issue 20).

Trains the main job's Coarse2Fine and baseline (`c2f train`, the built-in synthetic set, every
other flag at its default) once with `--precision f32` and once with `--precision bf16`, then
prints one `PRECISIONACC` line per model (model, f32 accuracy, bf16 accuracy, difference in
points, verdict) and exits 1 when bf16 is more than `--tolerance` points (default 1) below f32,
or a run gave no accuracy. The accuracy is a model's last evaluated `test_average` in its
`metrics.jsonl` (the coarse head's where a model has one head).

    python3 tools/precision_accuracy.py --c2f target/release/c2f --out DIR [-- EXTRA FLAGS]
    python3 tools/precision_accuracy.py --compare F32_RUN_DIR BF16_RUN_DIR

`--compare` only reads two finished run directories (what the test command checks on made-up
ones, since neither precision but f32 runs without a GPU).
"""

import argparse
import glob
import json
import os
import subprocess
import sys

MODELS = "coarse2fine,baseline"


def accuracies(run_dir: str) -> dict:
    """Each model's last evaluated test accuracy in percent, from the metrics under run_dir."""
    found = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "metrics.jsonl"), recursive=True)):
        with open(path) as lines:
            for line in lines:
                record = json.loads(line)
                accuracy = record.get("test_average")
                if accuracy is None:
                    accuracy = record.get("test_coarse")
                if accuracy is not None:
                    found[record["model"]] = 100.0 * accuracy
    return found


def compare(f32_dir: str, bf16_dir: str, tolerance: float) -> bool:
    """Prints a PRECISIONACC line per model; whether every bf16 run is within tolerance."""
    f32, bf16 = accuracies(f32_dir), accuracies(bf16_dir)
    ok = bool(f32)
    for model in sorted(set(f32) | set(bf16)):
        if model not in f32 or model not in bf16:
            print(f"PRECISIONACC\t{model}\tno accuracy in {'f32' if model not in f32 else 'bf16'} run")
            ok = False
            continue
        diff = bf16[model] - f32[model]
        verdict = "within" if diff >= -tolerance else "misses"
        print(
            f"PRECISIONACC\t{model}\tf32 {f32[model]:.2f}%\tbf16 {bf16[model]:.2f}%\t"
            f"{diff:+.2f} points\t{verdict} {tolerance:g} point(s)"
        )
        ok &= diff >= -tolerance
    if not f32:
        print(f"PRECISIONACC\tno accuracy found under {f32_dir}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--c2f", help="the c2f binary")
    parser.add_argument("--out", help="where the two runs go")
    parser.add_argument("--compare", nargs=2, metavar=("F32_RUN_DIR", "BF16_RUN_DIR"))
    parser.add_argument("--tolerance", type=float, default=1.0, help="points bf16 may lose")
    parser.add_argument("extra", nargs="*", help="more flags for both runs")
    args = parser.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare, args.tolerance) else 1)
    if not (args.c2f and args.out):
        parser.error("--c2f and --out, or --compare")
    dirs = {}
    for precision in ("f32", "bf16"):
        dirs[precision] = os.path.join(args.out, precision)
        command = [args.c2f, "train", "--models", MODELS, "--precision", precision,
                   "--run-dir", dirs[precision], *args.extra]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    sys.exit(0 if compare(dirs["f32"], dirs["bf16"], args.tolerance) else 1)


if __name__ == "__main__":
    main()
