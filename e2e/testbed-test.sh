#!/usr/bin/env bash
# The test bed's answer to Debian moving on (issue 20), against fake Debian archives: local
# file:// repositories whose Packages lists hold, or no longer hold, the pinned containerd and
# registry versions. Checks that pins win while they exist (and when only cached), that a
# missing pin falls back to the same upstream minor line, else to the suite's newest version,
# that each fallback is reported in one WARNING line and by `versions`, and that the containerd
# config follows the version actually unpacked. Runs no containerd, needs no network and
# leaves nothing behind; a few seconds.
#
#   e2e/testbed-test.sh        (make testbed-test; part of make test)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=$ROOT/e2e/testbed.sh
ARCH=$(dpkg --print-architecture)
T=$(mktemp -d /tmp/wasmpod-testbed-test.XXXXXX)
trap 'rm -rf "$T"' EXIT

passed=0
failed=0
check() {
	local name=$1
	shift
	if "$@"; then
		passed=$((passed + 1))
		echo "ok: $name"
	else
		failed=$((failed + 1))
		echo "FAILED: $name"
	fi
}
has() { grep -qF -- "$2" <<<"$1"; }
lacks() { ! grep -qF -- "$2" <<<"$1"; }
count() { grep -cF -- "$2" <<<"$1" || true; }

# A .deb that looks like Debian's to the test bed: the binaries it runs from the unpacked tree.
fake_deb() {
	local pkg=$1 version=$2 d=$T/build/$1-$2 bin
	mkdir -p "$d/DEBIAN" "$d/usr/bin" "$T/debs"
	case $pkg in
	containerd) bin=(containerd ctr) ;;
	*) bin=("$pkg") ;;
	esac
	for b in "${bin[@]}"; do
		printf '#!/bin/sh\necho "fake %s %s"\n' "$b" "$version" >"$d/usr/bin/$b"
		chmod 755 "$d/usr/bin/$b"
	done
	printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: wasmpod tests <test@wasmpod.invalid>\nDescription: fake %s for e2e/testbed-test.sh\n' \
		"$pkg" "$version" "$ARCH" "$pkg" >"$d/DEBIAN/control"
	dpkg-deb -Zgzip --root-owner-group -b "$d" "$T/debs/${pkg}_${version}_$ARCH.deb" >/dev/null
}

# repo NAME SUITE:PKG=VERSION... : an archive at file://$T/NAME (an unsigned one: the test
# bed reads it with trusted=yes). A suite named with no packages gets an empty list.
repo() {
	local r=$T/$1 spec suite pkg version deb list
	shift
	for spec in "$@"; do
		suite=${spec%%:*}
		list=$r/dists/$suite/main/binary-$ARCH/Packages
		mkdir -p "$(dirname "$list")" "$r/pool"
		touch "$list"
		[ "$spec" != "$suite:" ] || continue
		pkg=${spec#*:}
		version=${pkg#*=}
		pkg=${pkg%%=*}
		deb=$T/debs/${pkg}_${version}_$ARCH.deb
		[ -f "$deb" ] || fake_deb "$pkg" "$version"
		cp "$deb" "$r/pool/"
		{
			dpkg-deb -f "$deb"
			echo "Filename: pool/$(basename "$deb")"
			echo "Size: $(stat -c %s "$deb")"
			echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"
			echo
		} >>"$list"
	done
}

# bed TESTBED MIRROR CMD...: the test bed on its own cache, reading the archive at MIRROR.
# Sets out (stdout and stderr) and rc.
bed() {
	local tb=$1 mirror=$2
	shift 2
	rc=0
	out=$(WASMPOD_TESTBED=$tb WASMPOD_DEBIAN_MIRROR=$mirror WASMPOD_APT_OPTIONS=trusted=yes \
		bash "$TESTBED" "$@" 2>&1) || rc=$?
}

PIN17="1.7.24~ds1-6+deb13u1" PIN21="2.1.9+ds1-5" PINREG="2.8.2+ds1-1"
repo pins "trixie:containerd=$PIN17" "sid:containerd=$PIN21" "bookworm:docker-registry=$PINREG"
# Every pin gone; 2.1.x is still there next to a 2.2, as in a suite mid-transition.
repo moved "trixie:containerd=1.7.28~ds1-1" "sid:containerd=2.1.12+ds1-1" \
	"sid:containerd=2.2.1+ds1-1" "bookworm:docker-registry=2.8.3+ds1-1"
# Neither minor line left: trixie moved to 2.1, sid to 2.2.
repo gone "trixie:containerd=2.1.12+ds1-1" "sid:containerd=2.2.1+ds1-1" \
	"bookworm:docker-registry=$PINREG"
repo empty "trixie:containerd=$PIN17" "sid:" "bookworm:docker-registry=$PINREG"

echo "--- pins in the archive"
bed "$T/tb-pins" "file://$T/pins" fetch
check "fetch succeeds" [ "$rc" = 0 ]
check "no warning while every pin holds" lacks "$out" WARNING
bed "$T/tb-pins" "file://$T/pins" versions
check "versions: 1.7 pinned" has "$out" "1.7 = containerd $PIN17 (pinned)"
check "versions: 2.1 pinned" has "$out" "2.1 = containerd $PIN21 (pinned)"
check "pinned containerd unpacked" [ "$("$T/tb-pins/containerd-2.1/usr/bin/containerd")" = "fake containerd $PIN21" ]
check "pinned registry unpacked" [ -x "$T/tb-pins/tools/docker-registry/usr/bin/docker-registry" ]
bed "$T/tb-pins" "file://$T/pins" config 1.7
check "1.7 gets the version 2 config" has "$out" 'plugins."io.containerd.grpc.v1.cri"'
bed "$T/tb-pins" "file://$T/pins" config 2.1
check "2.1 gets the version 3 config" has "$out" "version = 3"

echo "--- pins gone, the same minor line still there"
bed "$T/tb-moved" "file://$T/moved" fetch
check "fetch succeeds" [ "$rc" = 0 ]
check "2.1 falls back to 2.1.12, not the newer 2.2.1, and says so" has "$out" \
	"WARNING: test bed: containerd 2.1 line: containerd is 2.1.12+ds1-1, not the pinned $PIN21: the pin is gone from Debian sid; took 2.1.12+ds1-1, Debian sid's current 2.1.x"
check "1.7 falls back to 1.7.28" has "$out" "containerd 1.7 line: containerd is 1.7.28~ds1-1, not the pinned $PIN17"
check "the registry falls back too" has "$out" \
	"WARNING: test bed: docker-registry is 2.8.3+ds1-1, not the pinned $PINREG: the pin is gone from Debian bookworm"
check "one warning line per fallback" [ "$(count "$out" WARNING)" = 3 ]
check "the fallback is unpacked" [ "$("$T/tb-moved/containerd-2.1/usr/bin/containerd")" = "fake containerd 2.1.12+ds1-1" ]
check "the fallback .deb is cached" [ -f "$T/tb-moved/debs/containerd_2.1.12+ds1-1_$ARCH.deb" ]
bed "$T/tb-moved" "file://$T/moved" versions 2.1
check "versions names the tested version and the pin" has "$out" \
	"2.1 = containerd 2.1.12+ds1-1 (NOT the pinned $PIN21"
bed "$T/tb-moved" "file://$T/moved" fetch
check "a second fetch warns again" [ "$(count "$out" WARNING)" = 3 ]

echo "--- pins gone and their minor lines too"
bed "$T/tb-gone" "file://$T/gone" fetch
check "fetch succeeds" [ "$rc" = 0 ]
check "2.1 takes sid's current 2.2.1 and says why" has "$out" \
	"containerd 2.1 line: containerd is 2.2.1+ds1-1, not the pinned $PIN21: the pin is gone from Debian sid; took 2.2.1+ds1-1, Debian sid's current version (it has no 2.1.x any more)"
check "1.7 takes trixie's 2.1.12" has "$out" "containerd 1.7 line: containerd is 2.1.12+ds1-1"
check "the registry pin holds: no warning for it" lacks "$out" "docker-registry is"
bed "$T/tb-gone" "file://$T/gone" config 1.7
check "the 1.7 line holding a 2.x gets the version 3 config" has "$out" "'io.containerd.cri.v1.runtime'"

echo "--- a cached pinned .deb wins over the archive"
mkdir -p "$T/tb-cached/debs"
cp "$T/tb-pins/debs/"*.deb "$T/tb-cached/debs/"
bed "$T/tb-cached" "file://$T/nowhere" fetch
check "fetch succeeds without any archive" [ "$rc" = 0 ]
check "nothing fetched, no warning" lacks "$out" "fetching"
check "no warning" lacks "$out" WARNING
bed "$T/tb-cached" "file://$T/gone" fetch
check "pins win over an archive without them" lacks "$out" WARNING
bed "$T/tb-moved" "file://$T/moved" versions
bed "$T/tb-moved" "file://$T/pins" fetch
check "pins return once the archive has them again" lacks "$out" WARNING
bed "$T/tb-moved" "file://$T/pins" versions
check "and versions says pinned" [ "$(count "$out" "(pinned)")" = 2 ]

echo "--- a suite without the package"
bed "$T/tb-empty" "file://$T/empty" fetch
check "fetch fails" [ "$rc" != 0 ]
check "and says what is missing where" has "$out" "Debian sid has no containerd (pinned $PIN21)"

echo "--- the scripts that run containerd report what they ran"
check "e2e/run.sh reports the versions it tested" grep -q 'testbed.sh versions' "$ROOT/e2e/run.sh"
check "e2e/bench.sh reports the version it measured" grep -q 'testbed.sh versions' "$ROOT/e2e/bench.sh"
check "e2e/demo.sh reports the version it ran" grep -q 'testbed.sh versions' "$ROOT/e2e/demo.sh"

echo "testbed-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
