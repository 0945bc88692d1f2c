#!/usr/bin/env bash
# Watch a spot slice; when it is preempted (or fails), delete it, recreate it, bootstrap and relaunch.
# Training resumes from the latest checkpoint in --workdir, so a preemption costs at most checkpoint_every steps.
#   tpu_setup/babysit.sh --name ij-v5e --zone Z --type v5litepod-16 --config C --workdir gs://b/run1 [--interval 120] [--once]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: babysit.sh --name N --zone Z --type T --config C --workdir W [--interval S] [--max-restarts K] [--once] [--dry-run]"; usage_common; }
INTERVAL=120; MAX_RESTARTS=20; ONCE=0
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --interval) INTERVAL="$2"; shift 2 ;;
    --max-restarts) MAX_RESTARTS="$2"; shift 2 ;;
    --once) ONCE=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
parse_common "${args[@]}"
need NAME --name; need ZONE --zone; need TYPE --type; need CONFIG --config; need WORKDIR --workdir
DIR="$(dirname "$0")"
pass=(--name "$NAME" --zone "$ZONE" --type "$TYPE" --config "$CONFIG" --workdir "$WORKDIR")
[[ -n "$PROJECT" ]] && pass+=(--project "$PROJECT")
[[ "$SPOT" == 0 ]] && pass+=(--on-demand)
[[ "$DRY_RUN" == 1 ]] && pass+=(--dry-run)
restarts=0
while true; do
  # shellcheck disable=SC2046
  state=$(gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" $(project_flag) --format='value(state.state)' 2>/dev/null || echo MISSING)
  echo "[babysit] $(date -u +%FT%TZ) $NAME: $state"
  case "$state" in
    ACTIVE) ;;
    PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|CREATING) ;;
    *)
      if (( restarts >= MAX_RESTARTS )); then echo "[babysit] giving up after $restarts restarts" >&2; exit 1; fi
      restarts=$((restarts + 1))
      echo "[babysit] $NAME is $state: recreating (restart $restarts) and resuming from $WORKDIR"
      [[ "$state" != MISSING ]] && "$DIR/teardown.sh" "${pass[@]}"
      "$DIR/create.sh" "${pass[@]}"
      # wait until ACTIVE before bootstrapping
      until [[ "$DRY_RUN" == 1 ]] || [[ "$(gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" $(project_flag) --format='value(state.state)')" == ACTIVE ]]; do sleep 30; done
      "$DIR/bootstrap.sh" "${pass[@]}"
      "$DIR/launch.sh" "${pass[@]}"
      ;;
  esac
  [[ "$ONCE" == 1 ]] && exit 0
  sleep "$INTERVAL"
done
