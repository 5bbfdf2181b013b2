#!/usr/bin/env bash
# Checks deploy/kubernetes against the Kubernetes API schemas and KubeRay's
# RayCluster CRD (scripts/check_manifests.py says how), in its own virtualenv
# under target/. No cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/manifests-venv
pins=(kubernetes-validate==1.37.0 jsonschema==4.26.0 referencing==0.37.0 pyyaml==6.0.3)
if [ "$(cat "$venv/pins" 2>/dev/null)" != "${pins[*]}" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
    echo "${pins[*]}" > "$venv/pins"
fi
exec "$venv/bin/python" scripts/check_manifests.py "$@"
