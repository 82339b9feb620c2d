<?php
// php schema_diff.php DB TABLE [FILTER]
// What Doctrine's schema tools (doctrine:schema:update, migrations:diff) would run against a
// database where the manager set up its tables, for a Core that maps no entity of its own:
// the messenger table is added to the target schema as Symfony's transport does, and FILTER
// (a regex, DoctrineBundle's `schema_filter`) is applied as DoctrineBundle applies it. Prints
// one SQL statement per line.

declare(strict_types=1);

require __DIR__ . '/bootstrap.php';

use Doctrine\DBAL\DriverManager;
use Doctrine\DBAL\Schema\AbstractAsset;
use Doctrine\DBAL\Schema\Schema;

[, $db, $table] = $argv;
$filter = $argv[3] ?? null;
$params = marvin_dbal_params($db);
$config = new \Doctrine\DBAL\Configuration();
if ($filter !== null) {
    // DoctrineBundle's RegexSchemaAssetFilter.
    $config->setSchemaAssetsFilter(static function ($asset) use ($filter): bool {
        if ($asset instanceof AbstractAsset) {
            $asset = $asset->getName();
        }
        return (bool) preg_match($filter, $asset);
    });
}
$conn = DriverManager::getConnection($params, $config);
$sm = $conn->createSchemaManager();
$current = $sm->introspectSchema();
$target = new Schema();
// The transport on this very connection: Symfony adds its table only to the schema of the
// connection it uses.
$transportConfig = \Symfony\Component\Messenger\Bridge\Doctrine\Transport\Connection::buildConfiguration(
    'doctrine://default',
    ['table_name' => $table, 'auto_setup' => false],
);
(new \Symfony\Component\Messenger\Bridge\Doctrine\Transport\PostgreSqlConnection($transportConfig, $conn))
    ->configureSchema($target, $conn);
$diff = $sm->createComparator()->compareSchemas($current, $target);
foreach ($conn->getDatabasePlatform()->getAlterSchemaSQL($diff) as $sql) {
    echo $sql, "\n";
}
