#!/usr/bin/env bash
# Build the .deb and the .rpm of simian: installs cargo-deb and cargo-generate-rpm
# when missing, builds the release binary once, packages it twice, and prints the
# two package paths (last two lines of output).
#   bash packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions this packaging is written and tested against.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi
if ! cargo generate-rpm --version >/dev/null 2>&1; then
    echo "== installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" >&2
    cargo install cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION" --locked
fi

echo "== cargo build --release" >&2
cargo build --release --locked --bin simian

target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
rm -rf "$target_dir/debian" "$target_dir/generate-rpm"

echo "== cargo deb" >&2
cargo deb --no-build --locked >&2
echo "== cargo generate-rpm" >&2
cargo generate-rpm >&2

deb=$(ls "$target_dir"/debian/simian_*.deb)
rpm=$(ls "$target_dir"/generate-rpm/simian-*.rpm)
echo "$deb"
echo "$rpm"
