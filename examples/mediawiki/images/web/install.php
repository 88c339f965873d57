<?php
// Installs MediaWiki into the empty database of this environment (maintenance/install.php), then
// runs maintenance/update.php for the tables of this version's extensions. Run by the entrypoint's
// installer loop, as www-data, when health.php asked for it. Holds the lock `w2l-install` meanwhile;
// does nothing when the tables are already there. Exit 0 when the wiki is installed.
require '/usr/local/lib/w2l/lib.php';

$deadline = time() + 120;
for ( ;; ) {
	try {
		$db = w2l_connect();
		break;
	} catch ( Throwable $e ) {
		if ( time() > $deadline ) {
			fwrite( STDERR, "w2l-install: database unreachable: {$e->getMessage()}\n" );
			exit( 1 );
		}
		sleep( 1 );
	}
}
if ( w2l_one( $db, "SELECT GET_LOCK('" . W2L_LOCK . "', 600)" ) !== '1' ) {
	fwrite( STDERR, "w2l-install: could not take the lock " . W2L_LOCK . "\n" );
	exit( 1 );
}
if ( w2l_installed( $db ) ) {
	echo "w2l-install: the wiki is installed already\n";
	exit( 0 );
}

function run( array $argv ): void {
	$t = microtime( true );
	passthru( implode( ' ', array_map( 'escapeshellarg', $argv ) ), $code );
	printf( "w2l-install: %s exited %d after %.1fs\n", basename( $argv[1] ), $code, microtime( true ) - $t );
	if ( $code !== 0 ) {
		exit( 1 );
	}
}

$ip = '/usr/share/mediawiki';
$pass = w2l_cfg( 'WIKI_DB_PASSWORD' );
@mkdir( '/tmp/w2l-install' );
echo "w2l-install: installing into the empty database `" . w2l_cfg( 'WIKI_DB_NAME', 'wiki' ) . "`\n";
// The installer refuses to run beside a LocalSettings.php; point it at a place without one.
putenv( 'MW_CONFIG_FILE=/tmp/w2l-install/LocalSettings.php' );
run( [ PHP_BINARY, "$ip/maintenance/install.php",
	'--confpath=/tmp/w2l-install',   // its LocalSettings.php is not used: the image has its own
	'--dbtype=mysql', '--dbserver=' . w2l_cfg( 'WIKI_DB_HOST', 'db' ),
	'--dbname=' . w2l_cfg( 'WIKI_DB_NAME', 'wiki' ), '--dbprefix=',
	'--dbuser=' . w2l_cfg( 'WIKI_DB_USER', 'wiki' ), '--dbpass=' . $pass,
	'--installdbuser=' . w2l_cfg( 'WIKI_DB_USER', 'wiki' ), '--installdbpass=' . $pass,
	'--server=http://localhost', '--scriptpath=', '--lang=en', '--skins=Vector,MonoBook',
	'--pass=' . w2l_cfg( 'WIKI_ADMIN_PASSWORD', 'w2l-admin-password-2024' ),
	w2l_cfg( 'WIKI_NAME', 'W2L' ), w2l_cfg( 'WIKI_ADMIN', 'Admin' ) ] );
putenv( 'MW_CONFIG_FILE' );
run( [ PHP_BINARY, "$ip/maintenance/update.php", '--quick' ] );
@unlink( '/tmp/w2l-install/LocalSettings.php' );
echo "w2l-install: done\n";
