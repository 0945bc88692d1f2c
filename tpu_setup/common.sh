#!/usr/bin/env bash
# Shared flag parsing and the `run` wrapper for the tpu_setup scripts (sourced, not executed).
# Every gcloud call goes through `run`, so --dry-run prints exactly what would be executed.
set -euo pipefail

NAME="${IJ_TPU_NAME:-}"
ZONE="${IJ_TPU_ZONE:-}"
PROJECT="${IJ_PROJECT:-}"
TYPE="${IJ_TPU_TYPE:-}"
SPOT=1
DRY_RUN=0
CONFIG=""
WORKDIR=""
PACKAGE="${IJ_PACKAGE:-interaction_jax[tpu,gcs]}"
CACHE_DIR="${IJ_COMPILE_CACHE:-}"
EXTRA=()

usage_common() {
  cat <<USAGE
common flags:
  --name NAME          TPU (queued resource and node) name          [\$IJ_TPU_NAME]
  --zone ZONE          e.g. us-east5-a                               [\$IJ_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's current one)  [\$IJ_PROJECT]
  --type TYPE          accelerator type: v5litepod-16, v6e-16, v5p-64 ... [\$IJ_TPU_TYPE]
  --on-demand          not spot (default: spot)
  --config PATH        configs/*.py to train
  --workdir PATH       run directory, gs://bucket/run for multi-host
  --package SPEC       pip spec installed on every worker (default: interaction_jax[tpu,gcs])
  --compile-cache DIR  persistent JAX compilation cache, e.g. gs://bucket/jax-cache
  --dry-run            print every gcloud command instead of running it
USAGE
}

parse_common() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) NAME="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --type) TYPE="$2"; shift 2 ;;
      --on-demand) SPOT=0; shift ;;
      --spot) SPOT=1; shift ;;
      --config) CONFIG="$2"; shift 2 ;;
      --workdir) WORKDIR="$2"; shift 2 ;;
      --package) PACKAGE="$2"; shift 2 ;;
      --compile-cache) CACHE_DIR="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) EXTRA+=("$1"); shift ;;
    esac
  done
}

need() {  # need VAR_NAME flag
  if [[ -z "${!1}" ]]; then echo "error: $2 is required (see --help)" >&2; exit 2; fi
}

project_flag() { if [[ -n "$PROJECT" ]]; then echo "--project=$PROJECT"; fi; }

# Runtime image per TPU generation (Cloud TPU VM software versions).
runtime_version() {
  case "$1" in
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) echo "error: unknown accelerator type '$1' (v5litepod-N, v5p-N, v6e-N, v4-N)" >&2; exit 2 ;;
  esac
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# ssh the same command to every worker of the slice.
on_all_workers() {
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" $(project_flag) --worker=all --command="$1"
}
