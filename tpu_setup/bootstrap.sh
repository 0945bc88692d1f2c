#!/usr/bin/env bash
# Install the pinned package with [tpu] in a venv on every worker; point JAX's compile cache at storage.
#   tpu_setup/bootstrap.sh --name ij-v5e --zone us-west4-a [--package 'interaction_jax[tpu] @ git+https://...@SHA']
source "$(dirname "$0")/common.sh"
usage() { echo "usage: bootstrap.sh --name N --zone Z [--package SPEC] [--compile-cache gs://...] [--dry-run]"; usage_common; }
parse_common "$@"
need NAME --name; need ZONE --zone
CACHE="${CACHE_DIR:-\$HOME/jax-cache}"
on_all_workers "set -e; python3 -m venv \$HOME/ij-venv && \$HOME/ij-venv/bin/pip install -q --upgrade pip && \
\$HOME/ij-venv/bin/pip install -q '$PACKAGE' && \
printf 'export JAX_COMPILATION_CACHE_DIR=%s\nexport PATH=\$HOME/ij-venv/bin:\$PATH\n' '$CACHE' > \$HOME/ij-env.sh && \
\$HOME/ij-venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
echo "[bootstrap] installed $PACKAGE on all workers of $NAME"
