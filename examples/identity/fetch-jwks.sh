#!/bin/sh
# Refreshes the providers' signing keys and reloads the gateway, which
# re-reads every jwks_file (a broken download keeps the old keys: the
# reload of an invalid policy is refused and logged).
# Run from a timer (e.g. hourly); the gateway host needs to reach the two
# URLs (through a rule for root, or from outside the guarded cgroup).
set -eu
dir=/etc/chokepoint/jwks
mkdir -p "$dir"
fetch() {
    tmp=$(mktemp "$dir/.$1.XXXXXX")
    if curl -fsS --max-time 20 "$2" -o "$tmp"; then
        mv "$tmp" "$dir/$1.json"
    else
        rm -f "$tmp"
        echo "fetch-jwks: $2 failed; keeping the previous keys" >&2
    fi
}
fetch github https://token.actions.githubusercontent.com/.well-known/jwks
fetch gitlab https://gitlab.com/oauth/discovery/keys
systemctl reload chokepoint
