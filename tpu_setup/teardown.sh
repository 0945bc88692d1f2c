#!/usr/bin/env bash
# Delete the slice and its queued resource. Checkpoints in --workdir (gs://) are kept.
#   tpu_setup/teardown.sh --name ij-v5e --zone us-west4-a [--dry-run]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: teardown.sh --name N --zone Z [--dry-run]"; usage_common; }
parse_common "$@"
need NAME --name; need ZONE --zone
# shellcheck disable=SC2046
run gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" $(project_flag) --force --quiet
echo "[teardown] deleted $NAME"
