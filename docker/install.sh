#!/usr/bin/env bash
# Installs n2d-dicom and its runtime dependencies into a virtual environment. It is the one install
# step of both images (Dockerfile, Dockerfile.cuda), and CI runs it outside Docker
# (tests/docker/test_install.py): no Docker engine builds the images there, so this is what proves
# that their install works.
#
# Usage: docker/install.sh PREFIX [SOURCE]
#   PREFIX  the virtual environment to create; the node's commands end up in PREFIX/bin:
#           n2d, and n2d-healthcheck (what the images' HEALTHCHECK runs)
#   SOURCE  the n2d-dicom source tree (default: the repository that holds this script)
# Environment:
#   PYTHON           interpreter that makes the environment (default: python3)
#   TORCH_SPEC       torch requirement, installed first (default: torch==2.13.0, the CPU wheel on
#                    this project's machines; the package itself accepts any torch>=2.2,<3)
#   TORCH_INDEX_URL  index that torch and its dependencies come from, e.g. a CUDA wheel index
#                    (default: pip's configured index)
set -euo pipefail

prefix=${1:?usage: install.sh PREFIX [SOURCE]}
source_dir=${2:-$(cd "$(dirname "$0")/.." && pwd)}

"${PYTHON:-python3}" -m venv "$prefix"
pip=("$prefix/bin/python" -m pip --disable-pip-version-check --quiet)
# torch first and on its own, so the build chosen here (CPU or CUDA) is the one the package gets.
"${pip[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
# Not editable: an image keeps the installed package, not the source tree. The redis extra: the
# compose file's node and workers share their queue on Redis.
"${pip[@]}" install "${source_dir}[redis]"
install -m 0755 "$source_dir/docker/healthcheck.py" "$prefix/bin/n2d-healthcheck"
"$prefix/bin/n2d" version
