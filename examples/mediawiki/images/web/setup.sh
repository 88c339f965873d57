#!/bin/sh
# Runs once in a container of w2l-web-rootfs (this folder mounted at /src) with the version as $1;
# build-images.sh commits the result as w2l-web:$1 (CMD /usr/local/bin/entrypoint.sh, EXPOSE 80).
# The versions differ by their settings: version-2.php enables AbuseFilter, whose tables only
# maintenance/update.php creates.
set -eu
V=$1
cd /usr/share/mediawiki
install -m 644 /src/LocalSettings.php /etc/mediawiki/LocalSettings.php
install -m 644 "/src/version-$V.php" /etc/mediawiki/w2l-version.php
echo "$V" >/etc/mediawiki/w2l-version.txt
install -m 644 /src/site.conf /etc/apache2/sites-available/000-default.conf
mkdir -p /usr/local/lib/w2l
install -m 644 /src/lib.php /src/health.php /src/install.php /usr/local/lib/w2l/
install -m 755 /src/entrypoint.sh /usr/local/bin/entrypoint.sh
a2disconf -q mediawiki other-vhosts-access-log
mkdir -p /run/w2l /var/cache/mediawiki
# The localisation cache (en) is built here, once, and never rebuilt at run time.
php maintenance/rebuildLocalisationCache.php --lang=en --force --no-progress >/dev/null
chown -R www-data:www-data /run/w2l /var/cache/mediawiki
