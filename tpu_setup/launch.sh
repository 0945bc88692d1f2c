#!/usr/bin/env bash
# Start the same training command on every worker (jax.distributed finds its peers on Cloud TPU), then
# collect the logs. Re-running resumes from the latest checkpoint in --workdir.
#   tpu_setup/launch.sh --name ij-v5e --zone us-west4-a --config configs/tpu_v5e_1b.py --workdir gs://b/run1
source "$(dirname "$0")/common.sh"
usage() { echo "usage: launch.sh --name N --zone Z --config C --workdir gs://... [--dry-run] [-- extra train flags]"; usage_common; }
parse_common "$@"
need NAME --name; need ZONE --zone; need CONFIG --config; need WORKDIR --workdir
EXTRA_FLAGS="${EXTRA[*]:-}"
EXTRA_FLAGS="${EXTRA_FLAGS#-- }"
CMD="source \$HOME/ij-env.sh && cd \$HOME && nohup python -m interaction_jax train --config $CONFIG --workdir $WORKDIR --set train.distributed=true $EXTRA_FLAGS > \$HOME/ij-train.log 2>&1 &"
on_all_workers "$CMD"
mkdir -p "logs/$NAME"
on_all_workers "sleep 30; tail -n 50 \$HOME/ij-train.log" | tee "logs/$NAME/launch.log" || true
echo "[launch] started on all workers of $NAME; first log lines in logs/$NAME/launch.log"
