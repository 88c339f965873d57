#!/bin/sh
# Runs once in a container of w2l-cache-rootfs; build-images.sh commits the result as
# w2l-cache:bookworm (USER memcache, CMD memcached -m 64 -l 0.0.0.0, EXPOSE 11211).
set -eu
command -v memcached >/dev/null
