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
    # braidd tests: a client running as another uid (peer credentials), sysctl in namespaces.
    curl procps
    # A real Prometheus scrapes braidd in crates/daemon/tests/live.rs.
    prometheus
    # Inspection tools used by the docs' investigations.
    bpftool xdp-tools
    # AWS-LC (aws-lc-rs, the AES of encrypt/decrypt): C sources built by the cc crate.
    gcc
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
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
