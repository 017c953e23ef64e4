#!/usr/bin/env bash
# Installs the Debian packages whose commands are missing: each argument is `command:package`
# (or just `name` when both are the same); a command starting with `/` is a file that must
# exist (a library's header, a rule set). As root it runs apt-get; otherwise it names what to
# install and fails.
set -euo pipefail
need=()
for pair in "$@"; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  case "$cmd" in
    /*) [ -e "$cmd" ] || need+=("$pkg") ;;
    *) command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg") ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${need[*]}; install them (apt-get install -y ${need[*]}) or run as root" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# packages with a service (nginx) must not start it: tests start what they need themselves
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
[ "$made_policy" = 1 ] && rm -f "$policy"
true
