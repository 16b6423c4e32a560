#!/usr/bin/env bash
# `make lint`: the pinned clang-format (14, .clang-format) over every tracked C file,
# bash -n over the scripts, and the README's settings table against docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
want=14
have=$(clang-format --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
if [ "$have" != "$want" ]; then
	echo "lint: clang-format $want is pinned (found $have)" >&2
	exit 1
fi
files=$(git ls-files '*.c' '*.h')
bad=0
for f in $files; do
	if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
		echo "lint: $f is not formatted (make format)" >&2
		bad=1
	fi
done
for s in $(git ls-files '*.sh') .ci/run; do
	bash -n "$s" || bad=1
done
# The README's settings table is built from docs/; a stale one fails here.
python3 tests/tools/env-table.py --check || bad=1
[ "$bad" = 0 ] && echo "lint: ok"
exit $bad
