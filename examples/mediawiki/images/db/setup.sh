#!/bin/sh
# Runs once in a container of w2l-db-rootfs (this folder mounted at /src); build-images.sh commits
# the result as w2l-db:bookworm with CMD /usr/local/bin/entrypoint.sh and EXPOSE 3306.
set -eu
install -m 755 /src/entrypoint.sh /usr/local/bin/entrypoint.sh
# Each container (each environment's volume) initialises its own data directory at first start.
rm -rf /var/lib/mysql
mkdir -p /var/lib/mysql /run/mysqld
chown mysql:mysql /var/lib/mysql /run/mysqld
