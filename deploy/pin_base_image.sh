#!/usr/bin/env bash
# Pins deploy/Dockerfile's base image to the digest its tag points at now, so that every build gets the
# same bytes (run it where the registry can be reached; it needs `crane` or `docker buildx`).
#   deploy/pin_base_image.sh            -> rewrites `ARG BASE_IMAGE=...` to `image:tag@sha256:...`, prints it
# Run again after changing the tag: an existing digest is replaced by the new tag's.
set -euo pipefail
cd "$(dirname "$0")/.."
line=$(grep -E '^ARG BASE_IMAGE=' deploy/Dockerfile) || { echo "error: no 'ARG BASE_IMAGE=' line in deploy/Dockerfile" >&2; exit 1; }
image=${line#ARG BASE_IMAGE=}
image=${image%%@*}
if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$image")
elif command -v docker >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$image" --format '{{json .Manifest.Digest}}' | tr -d '"')
else
    echo "error: resolving $image needs crane or docker buildx, and access to its registry" >&2
    exit 1
fi
if [[ ! $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "error: '$digest' is not a digest (image $image)" >&2
    exit 1
fi
sed -i "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=${image}@${digest}|" deploy/Dockerfile
echo "${image}@${digest}"
