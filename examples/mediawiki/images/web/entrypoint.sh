#!/bin/sh
# w2l-web entrypoint: wait for the database (deadline WIKI_DB_WAIT seconds, default 120; exit 1
# after it, and Docker's restart policy tries again), start the installer loop, then run apache in
# the foreground as PID 1.
#
# The installer loop installs the wiki only when health.php asks for it (an empty database seen by
# GET /health): see health.php for why installation is lazy.
set -eu
mkdir -p /run/w2l
chown www-data:www-data /run/w2l
rm -f /run/w2l/install-requested

wait_s=${WIKI_DB_WAIT:-120}
deadline=$(( $(date +%s) + wait_s ))
until php -r 'require "/usr/local/lib/w2l/lib.php"; w2l_connect();' 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "w2l-web: database ${WIKI_DB_HOST:-db} not reachable within ${wait_s}s" >&2
        exit 1
    fi
    sleep 1
done
echo "w2l-web: version $(cat /etc/mediawiki/w2l-version.txt), database ${WIKI_DB_HOST:-db} reachable" >&2

(
    while :; do
        if [ -e /run/w2l/install-requested ]; then
            if runuser -u www-data -- php /usr/local/lib/w2l/install.php; then
                exit 0
            fi
            rm -f /run/w2l/install-requested   # the next health check asks again
        fi
        sleep 0.5
    done
) &

set +u  # envvars reads unset variables
. /etc/apache2/envvars
mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR"
exec apache2 -DFOREGROUND
