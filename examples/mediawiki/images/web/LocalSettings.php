<?php
# MediaWiki settings of the w2l example stack (switchyard, examples/mediawiki). The image carries
# this file (the installer's own LocalSettings.php is thrown away), so each image version brings
# its settings: w2l-version.php is version-1.php or version-2.php. Everything that differs between
# deployments comes from the container's environment (switchyard.toml, [site.release.services]).
if ( !defined( 'MEDIAWIKI' ) ) {
	exit;
}

function w2l_env( string $name, string $default = '' ): string {
	$v = getenv( $name );
	return ( $v === false || $v === '' ) ? $default : $v;
}

$wgSitename = w2l_env( 'WIKI_NAME', 'W2L' );
$wgMetaNamespace = 'Project';
# WIKI_SERVER, else for web requests the request's Host (and X-Forwarded-Proto, set by switchyard),
# for maintenance scripts http://localhost.
if ( w2l_env( 'WIKI_SERVER' ) !== '' ) {
	$wgServer = w2l_env( 'WIKI_SERVER' );
} elseif ( PHP_SAPI === 'cli' ) {
	$wgServer = 'http://localhost';
} else {
	$wgServer = WebRequest::detectServer( true );
}
$wgScriptPath = '';
$wgResourceBasePath = $wgScriptPath;
$wgLanguageCode = 'en';
$wgLocaltimezone = 'UTC';

$wgDBtype = 'mysql';
$wgDBserver = w2l_env( 'WIKI_DB_HOST', 'db' );
$wgDBname = w2l_env( 'WIKI_DB_NAME', 'wiki' );
$wgDBuser = w2l_env( 'WIKI_DB_USER', 'wiki' );
$wgDBpassword = w2l_env( 'WIKI_DB_PASSWORD' );
$wgDBprefix = '';
$wgDBTableOptions = 'ENGINE=InnoDB, DEFAULT CHARSET=binary';

# The environment's `cache` service. Sessions stay in the database: they survive a release (the
# database is dumped and restored; the new environment's memcached starts empty).
$wgMainCacheType = CACHE_MEMCACHED;
$wgMemCachedServers = [ w2l_env( 'WIKI_CACHE', 'cache:11211' ) ];
$wgSessionCacheType = CACHE_DB;
$wgCacheDirectory = '/var/cache/mediawiki';
# The localisation cache is built into the image (Dockerfile); never rebuilt at run time.
$wgLocalisationCacheConf['manualRecache'] = true;

# Secrets must be the same in every environment (tokens and sessions outlive a release).
$wgSecretKey = w2l_env( 'WIKI_SECRET_KEY', 'change-me-w2l-example-secret-key-0000000000000000' );
$wgUpgradeKey = substr( hash( 'sha256', $wgSecretKey . 'upgrade' ), 0, 16 );

# Uploads go to $IP/images = /var/lib/mediawiki/images, a volume that switchyard.toml marks as data
# (`data_volumes = ["images"]`): every backup set archives it, a release restores it into the new
# environment. No ImageMagick or GD here: originals are stored and served, thumbnails are not made.
$wgEnableUploads = true;
$wgUseImageMagick = false;
$wgEnableEmail = false;
$wgDiff3 = '';
$wgShowExceptionDetails = true;
# The example edits and uploads by script, anonymously: no rate limit, anonymous uploads.
$wgGroupPermissions['*']['noratelimit'] = true;
$wgGroupPermissions['*']['upload'] = true;

wfLoadSkin( 'Vector' );
wfLoadSkin( 'MonoBook' );
$wgDefaultSkin = 'vector';

# Read-only during a release, two ways, both shown on the edit page as MediaWiki's own notice:
# - switchyard's app_read_only commands create/remove /run/w2l/read-only in the active web container
#   (it holds the reason);
# - switchyard sends reads with `X-Read-Only: 1` while the edge refuses writes.
if ( is_file( '/run/w2l/read-only' ) ) {
	$wgReadOnly = trim( (string)file_get_contents( '/run/w2l/read-only' ) )
		?: 'This wiki is being upgraded; editing is back in a few minutes.';
} elseif ( ( $_SERVER['HTTP_X_READ_ONLY'] ?? '' ) === '1' ) {
	$wgReadOnly = 'This wiki is being upgraded; editing is back in a few minutes.';
}

require_once '/etc/mediawiki/w2l-version.php';

if ( PHP_SAPI !== 'cli' && !headers_sent() ) {
	header( 'X-Wiki-Version: ' . W2L_VERSION );
}
