#!/usr/bin/env bash
# Set up everything kvmtrace needs on Debian 12, as root. Idempotent: a second
# run installs nothing and only checks. Used by the README's commands and .ci/run.
#
#   ./setup.sh            Debian packages, kernel headers link, tracefs,
#                         virtlogd + libvirtd, and the virtualenv in .venv
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (it installs packages and starts libvirtd): sudo ./setup.sh"
    exit 1
fi

# 1. Debian packages. bcc for Debian's /usr/bin/python3, QEMU, libvirt and
#    its Python binding, kernel headers for bcc, nasm for the demo guest's
#    ROM, the independent tracers the tests check kvmtrace against, and
#    prometheus for promtool, which checks deploy/'s rules. seabios and
#    ipxe-qemu (only recommended by qemu-system-x86) are the third-party
#    guests' firmware (tests/kernel/test_thirdparty.py).
PACKAGES=(python3-bpfcc bpfcc-tools python3-venv qemu-system-x86 seabios ipxe-qemu
          libvirt-daemon-system libvirt-clients python3-libvirt
          linux-headers-amd64 nasm bpftrace trace-cmd bpftool tmux prometheus)
# Packages whose services must not start: only a binary of theirs is used.
QUIET_SERVICES=(prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    plain=() quiet=()
    for p in "${missing[@]}"; do
        if [[ " ${QUIET_SERVICES[*]} " == *" $p "* ]]; then quiet+=("$p"); else plain+=("$p"); fi
    done
    [ ${#plain[@]} -eq 0 ] || apt-get install -y -qq "${plain[@]}" >/dev/null
    if [ ${#quiet[@]} -gt 0 ]; then
        # prometheus's postinst starts its server (invoke-rc.d, or systemd) and
        # enables it at boot; without systemd a failed start fails the install.
        # Its recommends (node-exporter, smartmontools, ...) are daemons too.
        # A policy-rc.d that refuses (exit 101) stops both invoke-rc.d and
        # deb-systemd-invoke; one already present (a container's) is kept.
        policy=/usr/sbin/policy-rc.d
        if [ -e "$policy" ]; then
            apt-get install -y -qq --no-install-recommends "${quiet[@]}" >/dev/null
        else
            printf '#!/bin/sh\n# setup.sh: no service starts while it installs %s\nexit 101\n' \
                "${quiet[*]}" >"$policy"
            chmod 755 "$policy"
            trap 'rm -f "$policy"' EXIT
            apt-get install -y -qq --no-install-recommends "${quiet[@]}" >/dev/null
            rm -f "$policy"
            trap - EXIT
        fi
        for s in "${quiet[@]}"; do  # and not at boot either
            update-rc.d "$s" disable >/dev/null 2>&1 || true
            deb-systemd-helper disable "$s.service" >/dev/null 2>&1 || true
        done
    fi
else
    say "Debian packages present"
fi

# 2. Kernel headers for bcc. A kernel without its own headers package (a
#    cloud or nested kernel) gets Debian's newest linux-headers linked in.
rel=$(uname -r)
mod=/lib/modules/$rel
if [ -d "$mod/build/include" ] || [ -e /sys/kernel/kheaders.tar.xz ]; then
    say "kernel headers for $rel present"
else
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common=${hdr%-amd64}-common
    if [ -z "$hdr" ] || [ ! -d "$common" ]; then
        say "no /usr/src/linux-headers-*-amd64 to link: apt-get install linux-headers-amd64"
        exit 1
    fi
    say "linking $hdr as the headers of $rel (this kernel ships none)"
    mkdir -p "$mod"
    ln -sfn "$hdr" "$mod/build"
    ln -sfn "$common" "$mod/source"
fi

# 3. tracefs.
if [ -d /sys/kernel/tracing/events ]; then
    say "tracefs mounted"
else
    say "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
fi
[ -e /dev/kvm ] || { say "/dev/kvm is missing: load kvm_intel or kvm_amd"; exit 1; }

# 4. libvirt's daemons (no systemd here: started by hand when not running).
if ! pgrep -x virtlogd >/dev/null; then say "starting virtlogd"; virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then say "starting libvirtd"; libvirtd -d; fi
for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { say "libvirtd does not answer"; exit 1; }
say "libvirtd answering"

# 5. The virtualenv, from Debian's Python so that bcc and libvirt import.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc, libvirt' 2>/dev/null; then
    say "creating .venv from /usr/bin/python3 with system site packages"
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.kvmtrace-installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing kvmtrace into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
else
    say "kvmtrace installed in .venv"
fi
say "ready"
