#!/usr/bin/env bash
# Makes Debian's kubectl (package kubernetes-client: kubectl 1.20 with kustomize 2.0.3)
# available and prints its path on stdout; everything else goes to stderr. The kuberay
# tests build the manifests with it, so CI proves they work with that old kustomize:
#   KUBECTL="$(bash .ci/install-kubectl.sh)" python -m pytest tests/kuberay
#
# Idempotent; needs root for apt-get. Three cases:
#  - kubernetes-client is installed: print /usr/bin/kubectl.
#  - /usr/bin/kubectl is absent, or a file no package owns: apt-get install
#    kubernetes-client, print /usr/bin/kubectl.
#  - /usr/bin/kubectl belongs to another package (the Google Cloud SDK's `kubectl` on
#    some images): dpkg would refuse to overwrite it, and other tools rely on it, so
#    unpack Debian's package into $NONSTOP_KUBECTL_PREFIX (default /opt/kubernetes-client)
#    instead and print the kubectl there.
set -euo pipefail

PREFIX="${NONSTOP_KUBECTL_PREFIX:-/opt/kubernetes-client}"
UNPACKED="$PREFIX/usr/bin/kubectl"

log() { echo "install-kubectl: $*" >&2; }

if [ "$(dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null || true)" = "install ok installed" ]; then
    echo /usr/bin/kubectl
    exit 0
fi
if [ -x "$UNPACKED" ]; then
    echo "$UNPACKED"
    exit 0
fi

owner="$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)"
log "apt-get update"
apt-get update -qq >&2
if [ -z "$owner" ]; then
    log "installing kubernetes-client"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >&2
    echo /usr/bin/kubectl
    exit 0
fi

log "/usr/bin/kubectl belongs to package '$owner'; unpacking kubernetes-client into $PREFIX"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq kubernetes-client >&2)
mkdir -p "$PREFIX"
dpkg-deb -x "$work"/kubernetes-client_*.deb "$PREFIX"
"$UNPACKED" version --client >&2
echo "$UNPACKED"
