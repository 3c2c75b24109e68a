#!/usr/bin/env bash
# Build rnnc with AddressSanitizer in a separate copy of this tree, with its own virtual
# environment, and run the test suite and the bad-input fuzz tests under it.
#
#   tools/asan.sh [--workdir DIR] [--keep] [--no-debug] [--fuzz-calls N] [--build-only]
#                 [--timeout SECONDS] [-- PYTEST_ARGS...]
#
# The checkout, its build and any other virtual environment are left alone: the files git knows
# of (tracked, and untracked but not ignored: no .so, .c or build/) are copied to DIR (default a
# new temporary directory, removed at the end unless --keep), built there with
#   CFLAGS/LDFLAGS = -fsanitize=address -fno-omit-frame-pointer
# and RNNC_DEBUG=1 (setup.py: -O0 -g, Cython bounds and initialisation checks; --no-debug keeps
# -O3), installed into DIR/venv with `pip install --no-build-isolation .`, and run with the
# ASan runtime preloaded into the (uninstrumented) Python:
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so)
#   ASAN_OPTIONS=detect_leaks=0 (CPython leaks by design) plus log_path=DIR/asan-logs/asan
#     (one file per process that reports), allocator_may_return_null=1 and
#     max_allocation_size_mb=4096 (an allocation over 4 GB raises MemoryError at once, instead
#     of ASan's allocation-size-too-big abort or gigabytes really allocated: the fuzz tests'
#     huge-size cases rely on it, since RLIMIT_AS cannot cap a process with ASan's shadow).
# Runs, in order: the default test suite (pytest [PYTEST_ARGS]), the fuzz tests' larger
# profile (pytest -m slow tests/test_fuzz.py), and the fuzz campaign
# (python tests/test_fuzz.py --calls N, default 12000; 0 skips it).
#
# Each run is stopped with SIGABRT after --timeout seconds (default 3600; PYTHONFAULTHANDLER
# then prints every thread's Python stack): a hang fails the run instead of blocking.
#
# Exit status: 2 if ASan reported anything (the reports are printed), else 1 if a test run
# failed, else 0. Needs gcc with libasan and PyPI (or the local index pip is set up for).
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
workdir="" keep=0 build_only=0 limit=3600 debug=1 fuzz_calls=12000 pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workdir) workdir=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-debug) debug=0; shift ;;
        --fuzz-calls) fuzz_calls=$2; shift 2 ;;
        --build-only) build_only=1; shift ;;
        --timeout) limit=$2; shift 2 ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "asan.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done

libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "asan.sh: gcc has no libasan.so (gcc -print-file-name=libasan.so: $libasan)" >&2
    exit 64
fi
if [ -z "$workdir" ]; then
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/rnnc-asan.XXXXXX")
    [ "$keep" = 1 ] || trap 'rm -rf "$workdir"' EXIT
else
    mkdir -p "$workdir"
fi
case "$(cd "$workdir" && pwd)/" in
    "$src"/*) echo "asan.sh: --workdir must lie outside the checkout $src" >&2; exit 64 ;;
esac
tree="$workdir/rnnc-src" venv="$workdir/venv" logs="$workdir/asan-logs"
echo "== asan.sh: copy of $src in $tree (git $(git -C "$src" rev-parse --short HEAD)$(
    [ -n "$(git -C "$src" status --porcelain)" ] && echo ", with uncommitted changes"))"
rm -rf "$tree" "$logs"
mkdir -p "$tree" "$logs"
(cd "$src" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
    | tar --null -T - -cf -) | tar -xf - -C "$tree" || { echo "asan.sh: copy failed" >&2; exit 1; }

echo "== asan.sh: virtual environment $venv"
python3 -m venv "$venv" || exit 1
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "setuptools>=77" "Cython>=3.0.10" numpy scipy threadpoolctl \
    pytest hypothesis || { echo "asan.sh: pip install of the build requirements failed" >&2; exit 1; }

echo "== asan.sh: build (RNNC_DEBUG=$debug, -fsanitize=address)"
asan_flags="-fsanitize=address -fno-omit-frame-pointer"
(cd "$tree" && CFLAGS="$asan_flags" LDFLAGS="$asan_flags" RNNC_DEBUG=$debug \
    python -m pip install --no-build-isolation --no-deps --quiet .) \
    || { echo "asan.sh: build failed" >&2; exit 1; }
# Every compiled module of the installed package must be instrumented (wherever the package
# keeps them).
pkg=$(cd "$workdir" && LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 python -P -c \
      "import os, rnnc; print(os.path.dirname(rnnc.__file__))") \
    || { echo "asan.sh: the built package does not import" >&2; exit 1; }
sos=$(find "$pkg" -name "*.so" | sort)
[ -n "$sos" ] || { echo "asan.sh: no compiled module under $pkg" >&2; exit 1; }
for so in $sos; do
    if [ "$(nm -D "$so" | grep -c __asan_init)" = 0 ]; then
        echo "asan.sh: $so is not instrumented (no __asan_ symbols)" >&2; exit 1
    fi
done
echo "== asan.sh: built $(echo "$sos" | wc -l) instrumented modules in $pkg"
[ "$build_only" = 1 ] && exit 0

export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan:allocator_may_return_null=1:max_allocation_size_mb=4096"
export PYTHONFAULTHANDLER=1
status=0
run() {
    echo "== asan.sh: $*"
    local t0=$SECONDS
    (cd "$tree" && timeout -s ABRT -k 30 "$limit" "$@")
    local rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 134 ] && echo "== asan.sh: timed out or aborted (limit $limit s)"
    echo "== asan.sh: exit $rc after $((SECONDS - t0)) s: $*"
    [ $rc -eq 0 ] || status=1
}
run pytest -q -p no:cacheprovider --continue-on-collection-errors "${pytest_args[@]}"
run pytest -q -p no:cacheprovider -m slow tests/test_fuzz.py
if [ "$fuzz_calls" != 0 ]; then
    run python -P tests/test_fuzz.py --calls "$fuzz_calls"
fi
unset LD_PRELOAD

# A log holds either a report (ERROR/SUMMARY lines) or only the warnings ASan writes when it
# returns NULL for an allocation over max_allocation_size_mb (MemoryError in Python: expected).
reports=$(grep -l -E "ERROR: AddressSanitizer|SUMMARY: AddressSanitizer" -r "$logs" | sort)
warned=$(grep -L -E "ERROR: AddressSanitizer|SUMMARY: AddressSanitizer" -r "$logs" | sort)
if [ -n "$warned" ]; then
    echo "== asan.sh: refused allocations (MemoryError, not errors), $(echo "$warned" | wc -l)" \
         "processes:"
    cat $warned | sort | uniq -c | sort -rn | head -5
fi
if [ -n "$reports" ]; then
    echo "== asan.sh: AddressSanitizer REPORTS ($(echo "$reports" | wc -l) processes):"
    for r in $reports; do echo "---- $r"; cat "$r"; done
    exit 2
fi
echo "== asan.sh: no AddressSanitizer report"
if [ $status -ne 0 ]; then
    echo "== asan.sh: but a test run failed (see above)"
fi
exit $status
