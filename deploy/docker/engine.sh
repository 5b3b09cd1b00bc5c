#!/bin/sh
# A Docker Engine for a machine without systemd (CI, a bare VM): start `dockerd` by hand when none
# answers where the docker CLI looks ($DOCKER_HOST, else /var/run/docker.sock), stop it by its pid.
#   deploy/docker/engine.sh start     exit 0 when an engine answers; prints dockerd's pid file if it started one
#   deploy/docker/engine.sh stop PIDFILE
# It starts dockerd with the default data root (/var/lib/docker, so images built before are reused:
# FLATEVAL_DOCKERD_ROOT changes it) and listens where the CLI looks. Needs root and Debian's docker.io.
set -eu
answers() { timeout 20 docker info >/dev/null 2>&1; }
case "${1:-}" in
start)
  if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
    echo "engine.sh: no docker/dockerd (apt-get install docker.io)" >&2; exit 1
  fi
  if answers; then exit 0; fi
  case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
    unix://*) sock=${DOCKER_HOST:-unix:///var/run/docker.sock}; sock=${sock#unix://} ;;
    *) echo "engine.sh: nothing answers at DOCKER_HOST=$DOCKER_HOST, and only a unix socket can be started here" >&2; exit 1 ;;
  esac
  if [ "$(id -u)" != 0 ]; then echo "engine.sh: no engine answers at $sock, and starting dockerd needs root" >&2; exit 1; fi
  root=${FLATEVAL_DOCKERD_ROOT:-/var/lib/docker}
  state=$(dirname "$sock")
  exec_root=/var/run/docker
  [ "$sock" = /var/run/docker.sock ] || exec_root=$state/exec
  pidfile=$state/flateval-dockerd.pid
  log=$state/flateval-dockerd.log
  mkdir -p "$state" "$root"
  rm -f "$sock"
  # setsid: its own session, so the caller's Ctrl-C does not reach it; stopped by pid with `stop`
  setsid dockerd --data-root "$root" --exec-root "$exec_root" -H "unix://$sock" --pidfile "$pidfile" \
    </dev/null >"$log" 2>&1 &
  i=0
  until answers; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then
      echo "engine.sh: dockerd did not answer within 60 s; its log ($log) ends:" >&2; tail -5 "$log" >&2; exit 1
    fi
    sleep 1
  done
  echo "engine.sh: started dockerd (pid $(cat "$pidfile")) at unix://$sock" >&2
  echo "$pidfile"
  ;;
stop)
  pidfile=${2:?usage: engine.sh stop PIDFILE}
  [ -f "$pidfile" ] || exit 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || exit 0
  i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1)); [ "$i" -ge 60 ] && { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.5
  done
  ;;
*) echo "usage: engine.sh start | stop PIDFILE" >&2; exit 2 ;;
esac
