#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz and libFuzzer) for a bounded time
# each and prints what each run did: executions, their rate, coverage, the
# corpus and its peak memory. Exits non-zero when a target crashed, with the
# input that did it (fuzz/artifacts/<target>/) and the command that replays it.
#
#   scripts/fuzz.sh                        every target, 20 s each (CI)
#   scripts/fuzz.sh --seconds 600 avro_decode collector_validate
#
# The corpus a run grows is kept in fuzz/corpus/<target>/ (not committed)
# and read again by the next run; fuzz/seeds/<target>/ is the committed seed
# corpus every run starts from. docs/fuzzing.md says what each target checks.
source "$(dirname "$0")/lib.sh"
cd "$ROOT/fuzz"

seconds=20
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "--seconds must be a whole number of seconds, got '$seconds'"

# libFuzzer is C++: cargo-fuzz's libfuzzer-sys compiles it.
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
  die "fuzzing needs a C++ compiler for libFuzzer (Debian: apt-get install g++)"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz from crates.io (first time only, a minute or two)"
  cargo install cargo-fuzz --locked --quiet || die "cargo install cargo-fuzz failed"
fi

# The targets are fuzz/fuzz_targets/*.rs (`cargo fuzz list` also names the
# seed writer, which is no target).
all_targets=($(cd fuzz_targets && ls *.rs | sed 's/\.rs$//'))
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || die "no fuzz target '$t' (there are: ${all_targets[*]})"
done

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# take them. No sanitizer (-s none): the targets are safe Rust, and an
# AddressSanitizer build instruments the C libraries cc-rs builds (zstd,
# librdkafka's dependencies), which then fail librdkafka's link checks.
fuzz_flags=(-O -s none)
export RUSTC_BOOTSTRAP=1
say "building the fuzz targets (release, coverage-instrumented)"
cargo fuzz build "${fuzz_flags[@]}"

logs="$(mktemp -d "${TMPDIR:-/tmp}/postback-fuzz.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
failed=()
# A libFuzzer final statistic of the target $t's log, and a field of its
# last status line ($last).
stat() { sed -n "s/^stat::$1: *//p" "$logs/$t.log" | tail -1; }
field() { sed -n "s/.* $1: \([^ ]*\).*/\1/p" <<<"$last"; }
printf '%-22s %12s %9s %7s %7s %8s %8s  %s\n' target executions exec/s cov features corpus rss_mb result >&2
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [[ -d "seeds/$t" ]] && seeds=("seeds/$t")
  status=ok
  cargo fuzz run "${fuzz_flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$logs/$t.log" 2>&1 || status=CRASH
  last="$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -1 || true)"
  printf '%-22s %12s %9s %7s %7s %8s %8s  %s\n' "$t" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "$(field cov)" "$(field ft)" "$(field corp)" \
    "$(stat peak_rss_mb)" "$status" >&2
  if [[ "$status" != ok ]]; then
    failed+=("$t")
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$logs/$t.log" | head -8 >&2 || true
    cp "$logs/$t.log" "artifacts/$t/last-run.log"
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  die "fuzzing crashed ${failed[*]}: the input is in fuzz/artifacts/<target>/ (full log: last-run.log); replay it with RUSTC_BOOTSTRAP=1 cargo fuzz run ${fuzz_flags[*]} <target> <input>, then make it a regression test"
fi
say "fuzzing found nothing in ${#targets[@]} targets × ${seconds} s"
