<?php
# Version 1 of the w2l wiki: the stock settings of LocalSettings.php.
define( 'W2L_VERSION', '1' );
