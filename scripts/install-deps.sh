#!/usr/bin/env bash
# Install the Debian packages braid's tests and benchmarks need. Idempotent:
# packages already present are skipped, and apt is only touched if something
# is missing. Run as root (CI does).
set -euo pipefail

PACKAGES=(
    # XDP programs: compiled by clang in build.rs, loaded with the kernel's BPF headers.
    clang llvm libbpf-dev libelf-dev pkg-config
    # Namespaces, veth, offload settings.
    iproute2 ethtool
    # Real peers and readers of our output; tcpdump and dumpcap (with tshark)
    # write the captures braid must read.
    tshark tcpdump sockperf iperf3 iputils-ping nftables openssl
    # braidd tests: a client running as another uid (peer credentials), sysctl in namespaces,
    # braidd run as nobody with only its capabilities (setpriv).
    curl procps util-linux
    # A real Prometheus scrapes braidd in crates/daemon/tests/live.rs.
    prometheus
    # The virtualenv of schemathesis (the API fuzz run of crates/daemon/tests/serving.rs).
    python3-venv
    # Inspection tools used by the docs' investigations.
    bpftool xdp-tools
    # AWS-LC (aws-lc-rs, the AES of encrypt/decrypt): C sources built by the cc crate.
    gcc
)

# Schemathesis (from PyPI, pinned) fuzzes braidd's API against its OpenAPI
# document; it lives in its own virtualenv (Debian's Python is externally
# managed). Installed after the Debian packages (it needs python3-venv).
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=/opt/braid/schemathesis
install_schemathesis() {
    if "$SCHEMATHESIS_VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: schemathesis missing; run as root to install it in $SCHEMATHESIS_VENV" >&2
        exit 1
    fi
    echo "install-deps: installing schemathesis $SCHEMATHESIS_VERSION in $SCHEMATHESIS_VENV"
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
}

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    install_schemathesis
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer once, non-interactively.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
install_schemathesis
