#!/usr/bin/env python3
"""Localization of several seeds' checkpoints, as a markdown table (docs/experiments.md, "Localization
of the three attention models over five seeds").

Runs `c2f localize` (default threshold and region; WS-DAN's box is its refinement crop) on every
checkpoint given, writes each one's JSON under --out, and prints per model the mean ± sample
standard deviation over its checkpoints of: ACoL localization accuracy (each head), GT-known
accuracy, mean IoU and top-1, beside the centred box's GT-known accuracy on the same test sets.
A checkpoint's model is the name of the folder holding it (`<run-dir>/<model>/checkpoint...`).

Usage: tools/localization_table.py [--c2f BIN] [--out DIR] CHECKPOINT...
e.g. the five seeds of the README's comparison:
  tools/localization_table.py --c2f target/release/c2f --out target/loc \\
    /work/cmp/seed{0..4}/{coarse2fine,coarse-only}/checkpoint.safetensors \\
    /work/cmp/ws-seed{0..4}/wsdan/checkpoint.safetensors
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def localize(c2f, checkpoint, out):
    """`c2f localize` of one checkpoint on the CPU; its metrics as JSON."""
    subprocess.run(
        [c2f, "localize", "--device", "cpu", "--json", str(out), str(checkpoint)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def mean_sd(values, scale):
    """'m ± sd' of values × scale (sd: the sample standard deviation; none for one value)."""
    values = [v * scale for v in values]
    m = statistics.mean(values)
    digits = 1 if scale == 100 else 3
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c2f", default="target/release/c2f", help="the c2f binary")
    parser.add_argument("--out", default="target/localization-table", type=Path,
                        help="where each checkpoint's JSON goes")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()

    by_model = {}
    for i, checkpoint in enumerate(args.checkpoints):
        if not checkpoint.is_file():
            sys.exit(f"localization_table: no checkpoint at {checkpoint}")
        model = checkpoint.parent.name
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"{i:03}-{model}.json"
        metrics = localize(args.c2f, checkpoint, out)
        by_model.setdefault(model, []).append(metrics)
        print(f"{checkpoint}: GT-known {metrics['gt_known']:.4f}", file=sys.stderr)

    print("| model | runs | loc. accuracy (per head) | GT-known | GT-known per run | mean IoU "
          "| top-1 (per head) | centred box, GT-known |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, runs in by_model.items():
        # The JSON's keys are coarse / fine / average whatever the model calls its heads
        # (WS-DAN: raw / refined); a model without a fine pass has null there.
        names = dict(zip(["coarse", "fine", "average"], runs[0]["heads"] + ["average"]))
        keys = [k for k in names if runs[0]["accuracy"][k] is not None]
        column = lambda key: [r[key] for r in runs]  # noqa: E731
        per_head = lambda key: " / ".join(  # noqa: E731
            f"{names[k]} {mean_sd([r[key][k] for r in runs], 100)}%" for k in keys)
        print(f"| {model} | {len(runs)} | {per_head('accuracy')} "
              f"| {mean_sd(column('gt_known'), 100)}% "
              f"| {', '.join(f'{v * 100:.1f}' for v in column('gt_known'))} "
              f"| {mean_sd(column('mean_iou'), 1)} "
              f"| {per_head('top1')} | {mean_sd(column('centered_baseline_gt_known'), 100)}% |")


if __name__ == "__main__":
    main()
