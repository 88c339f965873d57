#!/usr/bin/env bash
# Runs `switchyard envs watch` as a container of the image switchyard:local (IMAGE=...), with the
# restart policy unless-stopped: it comes back with the engine after an engine restart or a
# reboot, syncs every site at once, then at every container start. Idempotent (replaces a
# container of the same name).
#   ETC  config + certs          (default /etc/switchyard, mounted read-only)
#   RUN  the control socket dir  (default /run/switchyard)
#   LIB  state, locks, journal   (default /var/lib/switchyard)
# Host network: it checks whether a pool's 127.0.0.1 address answers, as the proxy sees it.
set -euo pipefail
IMAGE="${IMAGE:-switchyard:local}"
NAME="${NAME:-switchyard-envs-watch}"
ETC="${ETC:-/etc/switchyard}"; RUN="${RUN:-/run/switchyard}"; LIB="${LIB:-/var/lib/switchyard}"
docker rm -f "$NAME" >/dev/null 2>&1 || true
docker run -d --name "$NAME" --network host --restart unless-stopped \
  -v /var/run/docker.sock:/var/run/docker.sock \
  -v "$ETC":/etc/switchyard:ro -v "$RUN":/run/switchyard -v "$LIB":/var/lib/switchyard \
  "$IMAGE" envs watch "$@" >/dev/null
echo "run-envs-watch: $NAME started (docker logs -f $NAME)"
