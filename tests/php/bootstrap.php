<?php
// The real Symfony Messenger (Debian packages, no composer) as Marvin Core uses it: the two
// bundle message classes, a Doctrine transport on PostgreSQL or SQLite, either serializer.

declare(strict_types=1);

error_reporting(E_ALL);
set_error_handler(function (int $no, string $msg, string $file, int $line) {
    if ($no & (E_DEPRECATED | E_USER_DEPRECATED)) {
        return true;
    }
    throw new ErrorException($msg, 0, $no, $file, $line);
});

foreach ([
    'Symfony/Component/Messenger/autoload.php',
    'Symfony/Component/Serializer/autoload.php',
    'Symfony/Component/PropertyAccess/autoload.php',
    'Symfony/Component/PropertyInfo/autoload.php',
    'Symfony/Component/EventDispatcher/autoload.php',
    'Symfony/Component/ErrorHandler/autoload.php',
    'Doctrine/DBAL/autoload.php',
] as $file) {
    require_once '/usr/share/php/' . $file;
}

require_once __DIR__ . '/messages.php';

use Doctrine\DBAL\DriverManager;
use Symfony\Component\Messenger\Bridge\Doctrine\Transport\Connection;
use Symfony\Component\Messenger\Bridge\Doctrine\Transport\DoctrineTransport;
use Symfony\Component\Messenger\Bridge\Doctrine\Transport\PostgreSqlConnection;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;
use Symfony\Component\Messenger\Transport\Serialization\Serializer;
use Symfony\Component\PropertyInfo\Extractor\ReflectionExtractor;
use Symfony\Component\PropertyInfo\PropertyInfoExtractor;
use Symfony\Component\Serializer\Encoder\JsonEncoder;
use Symfony\Component\Serializer\Normalizer\ArrayDenormalizer;
use Symfony\Component\Serializer\Normalizer\DateTimeNormalizer;
use Symfony\Component\Serializer\Normalizer\ObjectNormalizer;
use Symfony\Component\Serializer\Serializer as SymfonySerializer;

/** The serializer as FrameworkBundle wires it. */
function marvin_serializer(string $kind): \Symfony\Component\Messenger\Transport\Serialization\SerializerInterface
{
    if ($kind === 'php') {
        return new PhpSerializer();
    }
    $extractor = new PropertyInfoExtractor([], [new ReflectionExtractor()]);
    return new Serializer(new SymfonySerializer(
        [new DateTimeNormalizer(), new ArrayDenormalizer(), new ObjectNormalizer(null, null, null, $extractor)],
        [new JsonEncoder()],
    ));
}

/** DBAL connection parameters for "pgsql://user@host:port/db" or "sqlite:///path/file.db". */
function marvin_dbal_params(string $db): array
{
    if (str_starts_with($db, 'sqlite://')) {
        return ['driver' => 'pdo_sqlite', 'path' => substr($db, strlen('sqlite://'))];
    }
    $u = parse_url($db);
    return [
        'driver' => 'pdo_pgsql',
        'host' => $u['host'],
        'port' => $u['port'] ?? 5432,
        'user' => $u['user'] ?? 'postgres',
        'password' => $u['pass'] ?? '',
        'dbname' => ltrim($u['path'], '/'),
    ];
}

/**
 * A Doctrine transport. $db: "pgsql://user@host:port/db" or "sqlite:///path/file.db".
 */
function marvin_transport(string $db, string $table, string $queue, string $serializer): DoctrineTransport
{
    $params = marvin_dbal_params($db);
    $dbal = DriverManager::getConnection($params);
    $config = Connection::buildConfiguration('doctrine://default', [
        'table_name' => $table,
        'queue_name' => $queue,
        'auto_setup' => false,
    ]);
    $connection = $params['driver'] === 'pdo_pgsql'
        ? new PostgreSqlConnection($config, $dbal)
        : new Connection($config, $dbal);
    return new DoctrineTransport($connection, marvin_serializer($serializer));
}
