<?php
// Shared by health.php (apache, www-data) and install.php (CLI): the database of this environment,
// and the MariaDB named lock `w2l-install` that an installation holds (health answers 503 then).

const W2L_LOCK = 'w2l-install';

function w2l_cfg( string $name, string $default = '' ): string {
	$v = getenv( $name );
	return ( $v === false || $v === '' ) ? $default : $v;
}

/** A connection to the wiki's database; throws when it cannot connect within 2 s. */
function w2l_connect(): mysqli {
	mysqli_report( MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT );
	$db = mysqli_init();
	$db->options( MYSQLI_OPT_CONNECT_TIMEOUT, 2 );
	$db->real_connect( w2l_cfg( 'WIKI_DB_HOST', 'db' ), w2l_cfg( 'WIKI_DB_USER', 'wiki' ),
		w2l_cfg( 'WIKI_DB_PASSWORD' ), w2l_cfg( 'WIKI_DB_NAME', 'wiki' ) );
	return $db;
}

function w2l_one( mysqli $db, string $sql ): ?string {
	$row = $db->query( $sql )->fetch_row();
	return $row[0] ?? null;
}

/** The wiki's tables are there (installed, or restored from a backup). */
function w2l_installed( mysqli $db ): bool {
	return (int)w2l_one( $db, "SELECT COUNT(*) FROM information_schema.tables"
		. " WHERE table_schema = DATABASE() AND table_name IN ('page', 'revision', 'updatelog')" ) === 3;
}

function w2l_busy( mysqli $db ): bool {
	return w2l_one( $db, "SELECT IS_FREE_LOCK('" . W2L_LOCK . "')" ) === '0';
}
