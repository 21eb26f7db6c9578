#!/bin/sh
# GitHub Actions self-hosted runner: ACTIONS_RUNNER_HOOK_JOB_COMPLETED.
# Ends the job bound to the runner's cgroup; its later connections (there
# should be none) are unidentified.
set -eu
chokepoint job end || true
