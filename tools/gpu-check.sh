#!/usr/bin/env bash
# GPU check in two steps (docs/gpu.md):
#   tools/gpu-check.sh bundle   here (cargo, no GPU): the release test and bench binaries that
#                               have GPU paths, stripped, into dist/gpu-bundle (git-ignored,
#                               carried to the GPU machine)
#   tools/gpu-check.sh run      on the GPU machine (no cargo): library paths, nvidia-smi, copy
#                               bandwidth, every test with the GPU required, the NVRTC fallback,
#                               compute-sanitizer memcheck and racecheck, the kernel benches;
#                               report.md and logs go to $OUT (or ./gpu-check-out), and a short
#                               pass/fail and timing table is printed last.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle="$root/dist/gpu-bundle"

build_bundle() {
  set -e
  cd "$root"
  NVCC=$(tools/cuda-toolchain.sh)
  export NVCC
  rm -rf "$bundle"
  mkdir -p "$bundle/tests" "$bundle/benches"
  # Cargo prints one JSON line per artifact; keep the executables of test and bench targets.
  local list
  list=$(mktemp)
  cargo test --workspace --release --no-run --message-format=json >"$list"
  cargo bench --workspace --no-run --message-format=json >>"$list"
  python3 - "$list" "$bundle" <<'PY'
import json, shutil, sys, os
listing, bundle = sys.argv[1], sys.argv[2]
for line in open(listing):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    kinds = msg.get("target", {}).get("kind", [])
    if not exe or msg.get("reason") != "compiler-artifact":
        continue
    name = msg["target"]["name"]
    # The CLI's GPU test (tests/model/cli.rs) runs the binary itself, found through C2F_BIN there.
    # (A bin target also comes as its unit-test harness, with profile.test set: not that one.)
    profile = msg.get("profile", {})
    if kinds == ["bin"] and name == "c2f" and not profile.get("test") and profile.get("opt_level") == "3":
        os.makedirs(os.path.join(bundle, "bin"), exist_ok=True)
        shutil.copy2(exe, os.path.join(bundle, "bin", name))
        continue
    # Only targets with GPU paths travel: the rest ran in CI already, and the bundle stays small.
    # A test binary of tests/<area>/main.rs is a module per file: the modules with GPU paths are
    # listed in tests/MODULES, and the run step runs those alone.
    src = msg["target"]["src_path"]
    files = [src]
    if "test" in kinds and os.path.basename(src) == "main.rs":
        folder = os.path.dirname(src)
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".rs") and f != "main.rs"]
    gpu_files = [f for f in files if any(m in open(f).read() for m in ("gpu_or_skip", "cuda_or_skip"))]
    # The loader's bench has no GPU path but travels too: its figures are for that machine's
    # 16 cores, the host that has to feed the GPU.
    if not gpu_files and not ("bench" in kinds and name == "loader"):
        continue
    if "bench" in kinds:
        dest = os.path.join(bundle, "benches", name)
    elif "test" in kinds and msg.get("profile", {}).get("test"):
        dest = os.path.join(bundle, "tests", name)
        with open(os.path.join(bundle, "tests", "MODULES"), "a") as listing:
            for f in gpu_files:
                listing.write(f"{name} {os.path.basename(f)[:-3]}\n")
    else:
        continue
    shutil.copy2(exe, dest)
PY
  rm -f "$list"
  [ -x "$bundle/bin/c2f" ] || { echo "the release c2f binary was not built" >&2; exit 1; }
  strip "$bundle"/tests/[!M]* "$bundle"/benches/* "$bundle"/bin/*
  git rev-parse HEAD >"$bundle/COMMIT"
  git status --porcelain | grep -q . && echo "dirty" >>"$bundle/COMMIT"
  ls -la "$bundle"/tests "$bundle"/benches
  # Stripped test binaries compress about fourfold; the carry limit counts the packed size.
  tar -C "$bundle" -cf - tests benches bin | xz -T0 -6 >"$bundle/bins.tar.xz"
  rm -rf "$bundle/tests" "$bundle/benches" "$bundle/bin"
  local size
  size=$(du -sm "$bundle" | cut -f1)
  echo "bundle: $bundle/bins.tar.xz, ${size} MiB, commit $(head -1 "$bundle/COMMIT")"
  if [ "$size" -ge 60 ]; then
    echo "bundle is ${size} MiB, over the 60 MiB budget" >&2
    exit 1
  fi
}

results=()
record() { results+=("$(printf '%-44s %-6s %7ss' "$1" "$2" "$3")"); }

# Steps stop being started once the budget (seconds since the run began) is spent, so the run
# ends inside the caller's time limit with a report; skipped steps say so. Tests come first,
# then the benches and sanitizers, most telling first.
budget=${C2F_CHECK_BUDGET:-480}
run_start=$(date +%s)

# run_step NAME TIMEOUT_S LOG COMMAND... : runs, logs, records pass/fail and seconds.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start end status verdict left
  start=$(date +%s)
  left=$((budget - (start - run_start)))
  if [ "$left" -le 5 ]; then
    record "$name" SKIPPED 0
    echo "skipped: the ${budget}s budget was spent" >"$log"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" >"$log" 2>&1
  status=$?
  end=$(date +%s)
  case $status in
    0) verdict=PASS ;;
    124) verdict=TIMEOUT ;;
    *) verdict=FAIL ;;
  esac
  record "$name" "$verdict" "$((end - start))"
  return 0
}

# sanitize OP... : compute-sanitizer memcheck, then racecheck, over each op's GPU tests (the
# op's module of the kernels test binary).
sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then
    record "compute-sanitizer" MISSING 0
    return 0
  fi
  [ -x "$bins/tests/kernels" ] || return 0
  local tool op
  for tool in memcheck racecheck; do
    for op in "$@"; do
      run_step "$tool $op" 150 "$logs/$tool-$op.txt" compute-sanitizer --tool "$tool" \
        --error-exitcode 1 "$bins/tests/kernels" "$op::gpu_" --test-threads=1
    done
  done
}

run_checks() {
  [ -f "$bundle/bins.tar.xz" ] || { echo "no bundle at $bundle: run 'tools/gpu-check.sh bundle' first" >&2; exit 1; }
  bins=$(mktemp -d /tmp/c2f-bins.XXXXXX)
  # Python's tarfile reads xz itself: no reliance on an xz binary there.
  python3 - "$bundle/bins.tar.xz" "$bins" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as pack:
    try:
        pack.extractall(sys.argv[2], filter="tar")
    except TypeError:  # Python before 3.12 has no filters
        pack.extractall(sys.argv[2])
PY
  local out=${OUT:-$root/gpu-check-out}
  mkdir -p "$out"
  local logs="$out/logs"
  mkdir -p "$logs"
  export C2F_REQUIRE_GPU=1
  eval "$("$root/tools/cuda-libs.sh" /tmp/c2f-libs 2>"$logs/libraries.txt")"
  cat "$logs/libraries.txt"
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$out/nvidia-smi.txt"
  head -15 "$out/nvidia-smi.txt"

  # Copy bandwidth measured by PyTorch, as an independent witness of the benches' own figure.
  python3 - >"$logs/copy-bandwidth.txt" 2>&1 <<'PY'
import torch
n = 1 << 28
a = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(20):
    b.copy_(a)
e.record()
torch.cuda.synchronize()
sec = s.elapsed_time(e) / 1e3 / 20
print(f"copy bandwidth (torch, read+write): {2 * n * 4 / sec / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
PY
  cat "$logs/copy-bandwidth.txt"

  export C2F_BIN="$bins/bin/c2f"
  # One step per module with GPU paths (tests/MODULES: binary and module), so that each op has
  # its own verdict, time limit and log, as when each was a binary of its own.
  local binary module filter
  while read -r binary module; do
    filter="$module::"
    # The CLI's and WS-DAN's other tests are CPU runs that CI made; only their GPU ones are for
    # this machine.
    case "$module" in cli | wsdan) filter="$module::gpu_" ;; esac
    run_step "test $module" 90 "$logs/test-$module.txt" "$bins/tests/$binary" "$filter" \
      --test-threads=1 --nocapture
  done <"$bins/tests/MODULES"
  # The NVRTC fallback (kernels built from source on the device) on one op.
  [ -x "$bins/tests/kernels" ] && C2F_FORCE_NVRTC=1 run_step "test bap (NVRTC fallback)" 120 \
    "$logs/test-bap-nvrtc.txt" "$bins/tests/kernels" bap::gpu_ --test-threads=1 --nocapture

  # The network benches and their PyTorch peer first, then the custom kernels, then the rest:
  # what is skipped when the budget runs out is what matters least. The filter leaves out the
  # benches' CPU groups, which CI times already.
  # run_bench NAME [LIMIT_S [FILTER]]: FILTER picks the rows criterion measures (default: the
  # GPU ones); every row's BENCH and SPEEDUP lines print whatever it is (CUDA events, not
  # criterion).
  run_bench() {
    [ -x "$bins/benches/$1" ] || return 0
    run_step "bench $1" "${2:-150}" "$logs/bench-$1.txt" "$bins/benches/$1" --bench --noplot \
      --warm-up-time 0.5 --measurement-time 1 "${3:-gpu|nccl}"
  }
  run_bench inception_gpu
  run_bench coarse2fine_gpu
  # PyTorch on the same card, the peer of the runtime's GPU figures.
  run_step "torch baseline" 120 "$logs/bench-torch.txt" python3 "$root/tools/torch_baseline.py"
  run_step "torch coarse2fine baseline" 150 "$logs/bench-torch-c2f.txt" \
    python3 "$root/tools/torch_c2f_baseline.py"
  run_step "torch ws-dan baseline" 150 "$logs/bench-torch-wsdan.txt" \
    python3 "$root/tools/torch_wsdan.py" --time
  # Whether the host's cores decode and augment fast enough to feed those steps (all its rows
  # are CPU ones).
  run_bench loader 120 loader
  # The kernels rewritten since the last GPU run first (docs/gpu-status.md says which), and the
  # transposed conv's bench (the longest) after the others.
  local first="augment bap pool batch_norm center_loss cast transpose sgd"
  local last="conv_transpose pretrain_upsampler"
  for b in $first; do run_bench "$b"; done
  for b in "$bins"/benches/*; do
    local name
    name=$(basename "$b")
    case " inception_gpu coarse2fine_gpu loader $first $last " in *" $name "*) continue ;; esac
    run_bench "$name"
  done
  # PyTorch's versions of the small ops, then each set against our kernel's row.
  run_step "torch ops baseline" 120 "$logs/bench-torch-ops.txt" \
    python3 "$root/tools/torch_ops_baseline.py"
  run_step "ours vs torch ops" 30 "$logs/bench-vs-torch.txt" \
    python3 "$root/tools/torch_ops_baseline.py" --join "$logs"
  # The kernels rewritten since the last GPU run under compute-sanitizer before the long benches,
  # the rest after them (they passed before): memcheck before racecheck within each set.
  sanitize augment bap pool batch_norm mask axpby conv_transpose cast transpose sgd
  # Criterion on the rewritten weight gradient only (all its rows took over 150 s on an H200);
  # the other rows still print their BENCH and SPEEDUP lines.
  run_bench conv_transpose 150 'gpu_(f32|bf16)/(grad_params|cudnn_[a-z0-9_]*backward_filter)'
  # Last: its CPU case runs outside criterion, so the filter does not shorten it.
  run_bench pretrain_upsampler
  sanitize center_loss softmax_ce sigmoid_bce
  # The main job's Coarse2Fine and baseline in bf16 within 1 point of their f32 accuracy.
  run_step "main job bf16 vs f32" 300 "$logs/main-job-precision.txt" \
    python3 "$root/tools/precision_accuracy.py" --c2f "$C2F_BIN" --out "$(mktemp -d)"

  {
    echo "# GPU check report"
    echo
    echo "- commit: $(tr '\n' ' ' <"$bundle/COMMIT")"
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "- card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
    echo "- $(cat "$logs/copy-bandwidth.txt" | tail -1)"
    echo
    echo "## Steps"
    echo
    echo '```'
    printf '%s\n' "${results[@]}"
    echo '```'
    echo
    echo "## Benchmarks (BENCH: group, name, card, us, GB/s, fraction of copy bandwidth, baseline)"
    echo
    echo '```'
    cat "$logs"/bench-*.txt 2>/dev/null | grep -E '^(BENCH|SPEEDUP|TORCHGPU|TORCHOP|VSTORCH|NETBENCH|OPBENCH|LOADBENCH|LOADPROFILE)|copy bandwidth' || echo "none"
    echo '```'
    echo
    echo "## The main job in bf16 against f32"
    echo
    echo '```'
    grep -h PRECISIONACC "$logs/main-job-precision.txt" 2>/dev/null || echo "none"
    echo '```'
    echo
    echo "## Failures and skips (first lines)"
    echo
    echo '```'
    grep -l -E 'FAILED|panicked|ERROR SUMMARY: [1-9]|skipped' "$logs"/*.txt 2>/dev/null | while read -r f; do
      echo "== $(basename "$f")"
      grep -E 'FAILED|panicked|ERROR SUMMARY|skipped|error' "$f" | head -8
    done
    echo '```'
  } >"$out/report.md"

  echo
  echo "== report: $out/report.md, logs in $out/logs.tar.gz"
  grep -h -E '^(BENCH|SPEEDUP|TORCHGPU|TORCHOP|VSTORCH|NETBENCH|OPBENCH|LOADBENCH|LOADPROFILE)' "$logs"/bench-*.txt 2>/dev/null | cut -f2- | cut -c1-160
  echo
  printf '%s\n' "${results[@]}"
  # The device tool brings back a handful of files: the logs travel as one archive.
  tar -C "$out" -czf "$out/logs.tar.gz" logs && rm -rf "$logs"
}

case "${1:-}" in
  bundle) build_bundle ;;
  run) run_checks ;;
  *)
    echo "usage: tools/gpu-check.sh bundle|run" >&2
    exit 2
    ;;
esac
