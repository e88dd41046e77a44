#!/bin/sh
# hack/fuzz.sh PKG TARGET FUZZTIME: fuzz one target for FUZZTIME.
#
# Go's fuzzing engine can end a run that found nothing with a bare
# "context deadline exceeded" when the deadline falls while a worker is
# minimizing a new interesting input. Such a run is tried once more; a
# run that wrote a failing input never is.
set -u
GO=${GO:-go}
pkg=$1 target=$2 fuzztime=$3
for try in 1 2; do
	out=$($GO test "$pkg" -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s 2>&1)
	rc=$?
	printf '%s\n' "$out"
	[ "$rc" -eq 0 ] && exit 0
	if printf '%s' "$out" | grep -q 'Failing input written to'; then
		exit "$rc"
	fi
	printf '%s' "$out" | grep -q 'context deadline exceeded' || exit "$rc"
	echo "== $target: the fuzzing engine ran out of time with no failing input; once more (try $try)"
done
exit 1
