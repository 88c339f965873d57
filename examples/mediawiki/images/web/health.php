<?php
// GET /health, for switchyard: 200 when the wiki's database is reachable and installed, else 503.
//
// It is also what installs a brand-new wiki, lazily: on an empty database it asks the entrypoint's
// installer (by creating /run/w2l/install-requested) and answers 503 until the installation is done.
// Why lazily and not at container start: a release creates the new environment (empty database)
// before it restores the backup into it; installing there would race with the restore. The new
// environment's health is first asked after restore and migrate, when the tables are there, so
// only `switchyard up` of a first environment ever installs.
require '/usr/local/lib/w2l/lib.php';
header( 'Content-Type: text/plain; charset=utf-8' );
header( 'Cache-Control: no-store' );
$version = trim( (string)@file_get_contents( '/etc/mediawiki/w2l-version.txt' ) );
try {
	$db = w2l_connect();
	if ( w2l_busy( $db ) ) {
		http_response_code( 503 );
		echo "installing (version $version)\n";
	} elseif ( !w2l_installed( $db ) ) {
		@touch( '/run/w2l/install-requested' );
		http_response_code( 503 );
		echo "empty database: installation requested (version $version)\n";
	} else {
		echo "ok version $version\n";
	}
} catch ( Throwable $e ) {
	http_response_code( 503 );
	echo 'database unreachable: ' . $e->getMessage() . "\n";
}
