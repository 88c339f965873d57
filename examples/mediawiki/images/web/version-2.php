<?php
# Version 2 of the w2l wiki: adds AbuseFilter (shipped in Debian's mediawiki package). Its tables
# (abuse_filter, abuse_filter_log, ...) do not exist in a version-1 database: moving one to version
# 2 needs maintenance/update.php, the release's `migrate` step. Without them every edit fails.
define( 'W2L_VERSION', '2' );
wfLoadExtension( 'AbuseFilter' );
$wgGroupPermissions['sysop']['abusefilter-modify'] = true;
$wgGroupPermissions['*']['abusefilter-view'] = true;
$wgGroupPermissions['*']['abusefilter-log'] = true;
