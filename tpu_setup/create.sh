#!/usr/bin/env bash
# Create a TPU slice through queued resources (spot by default), with the runtime for its generation.
#   tpu_setup/create.sh --name ij-v5e --zone us-west4-a --type v5litepod-16 [--on-demand] [--dry-run]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: create.sh --name N --zone Z --type T [--on-demand] [--dry-run]"; usage_common; }
parse_common "$@"
need NAME --name; need ZONE --zone; need TYPE --type
RUNTIME=$(runtime_version "$TYPE")
args=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE"
      --accelerator-type="$TYPE" --runtime-version="$RUNTIME")
[[ -n "$PROJECT" ]] && args+=(--project="$PROJECT")
[[ "$SPOT" == 1 ]] && args+=(--spot)
run "${args[@]}"
echo "[create] requested $TYPE '$NAME' in $ZONE (runtime $RUNTIME, $([[ $SPOT == 1 ]] && echo spot || echo on-demand))"
