#!/bin/sh
# w2l-db entrypoint: initialise /var/lib/mysql when it is empty, then run mariadbd as PID 1 (it
# handles SIGTERM itself). root@localhost authenticates by unix socket, so `docker exec C
# mariadb-dump ...` and `docker exec -i C mariadb` (switchyard's backup/restore) need no password.
# At first start, when set: MARIADB_DATABASE is created, and MARIADB_USER with MARIADB_PASSWORD
# gets all rights on it (from any address: the web container of the same environment).
# The port opens only after the init file ran, so "port open" means "ready".
# The binary log is on in ROW format (kept 7 days), so switchyard's online release flow
# (flow = "online"/"auto", issue 18) can copy the database while the wiki takes edits.
set -eu
DATADIR=/var/lib/mysql
mkdir -p /run/mysqld "$DATADIR"
chown mysql:mysql /run/mysqld "$DATADIR"
if [ ! -d "$DATADIR/mysql" ]; then
    echo "w2l-db: initialising $DATADIR" >&2
    mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=socket >/dev/null
    q() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }
    : >/run/mysqld/init.sql
    if [ -n "${MARIADB_DATABASE:-}" ]; then
        printf 'CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET binary;\n' "$MARIADB_DATABASE" >>/run/mysqld/init.sql
        if [ -n "${MARIADB_USER:-}" ]; then
            printf "CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s';\nGRANT ALL ON \`%s\`.* TO '%s'@'%%';\n" \
                "$(q "$MARIADB_USER")" "$(q "${MARIADB_PASSWORD:-}")" "$MARIADB_DATABASE" "$(q "$MARIADB_USER")" \
                >>/run/mysqld/init.sql
        fi
    fi
    chown mysql:mysql /run/mysqld/init.sql
    set -- --init-file=/run/mysqld/init.sql "$@"
fi
exec mariadbd --user=mysql --datadir="$DATADIR" --bind-address=0.0.0.0 \
    --log-bin=mysql-bin --binlog-format=ROW --server-id=1 --expire-logs-days=7 "$@"
