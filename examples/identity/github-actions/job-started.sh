#!/bin/sh
# GitHub Actions self-hosted runner: ACTIONS_RUNNER_HOOK_JOB_STARTED.
# Set it in the runner's .env:
#   ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/chokepoint/github-actions/job-started.sh
#   ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/opt/chokepoint/github-actions/job-completed.sh
# Workflows must grant the token:  permissions: { id-token: write }
#
# The hook runs as the runner user, in the runner service's cgroup, where
# the job's steps run too: `job begin` binds that cgroup (the default).
# The runner user must be in [identity] runner_users and in the gateway's
# admin_group.
set -eu
if [ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ]; then
    echo "chokepoint: this job has no id-token permission; it runs unidentified" >&2
    exit 0
fi
curl -fsS --max-time 20 \
    -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
    "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=chokepoint" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["value"])' \
  | chokepoint job begin --token-file -
