#!/bin/sh
# Write deploy/.env (or the file named) for `docker compose`, adding only the keys it lacks:
# random hex passwords, the agent limits fitted to this machine (the challenge's 4 CPUs and 15 GiB, or
# each pair's fair share of what the machine has: the engine refuses more CPUs than there are), and the base image when
# deploy/docker/base-image.sh has built it. Run it again after editing: what you set is kept.
#   deploy/init-env.sh [ENV_FILE]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ENV_FILE=${1:-$here/.env}
touch "$ENV_FILE"
chmod 600 "$ENV_FILE"
has() { grep -q "^$1=." "$ENV_FILE"; }
put() { has "$1" || printf '%s=%s\n' "$1" "$2" >> "$ENV_FILE"; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

put REDIS_PASSWORD "$(hex 24)"
put GRAFANA_ADMIN_PASSWORD "$(hex 12)"
put FLATEVAL_PAIRS 2
cpus=$(nproc)
pairs=$(sed -n 's/^FLATEVAL_PAIRS=//p' "$ENV_FILE" | tail -n 1)
# each agent's fair share of the machine when the pairs' agents do not fit (core/cpu_share.py: 1 core
# each for 2 pairs on 2 cores, so that their thread pools do not fight); without python3, the cores it has
share=$(PYTHONPATH="$here/.." python3 -c 'import sys; from core.cpu_share import fair_share
print(f"{fair_share(4, int(sys.argv[1]), int(sys.argv[2])).cpus:g}")' "${pairs:-2}" "$cpus" 2>/dev/null) \
  || share=$(( cpus < 4 ? cpus : 4 ))
put FLATEVAL_AGENT_CPUS "$share"
mem_mib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 2 ))
put FLATEVAL_AGENT_MEMORY "$(( mem_mib < 15360 ? mem_mib : 15360 ))m"
base=${FLATEVAL_BASE_IMAGE:-flateval/base:bookworm-r1}
if command -v docker >/dev/null 2>&1 && docker image inspect "$base" >/dev/null 2>&1; then
  put FLATEVAL_BASE_IMAGE "$base"
fi
echo "$ENV_FILE"
