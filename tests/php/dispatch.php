<?php
// php dispatch.php DB TABLE QUEUE php|json CASES.json
// Sends each case as Core does: a ManagerRequestCommand with the bus name stamp. A case with
// "retried": true carries the stamps Symfony adds when it re-sends a failed message.

declare(strict_types=1);

require __DIR__ . '/bootstrap.php';

use EnderLab\MarvinManagerBundle\Messenger\ManagerRequestCommand;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\Stamp\BusNameStamp;
use Symfony\Component\Messenger\Stamp\DelayStamp;
use Symfony\Component\Messenger\Stamp\ErrorDetailsStamp;
use Symfony\Component\Messenger\Stamp\RedeliveryStamp;
use Symfony\Component\Messenger\Stamp\TransportMessageIdStamp;

[, $db, $table, $queue, $serializer, $casesFile] = $argv;
$transport = marvin_transport($db, $table, $queue, $serializer);
$cases = json_decode(file_get_contents($casesFile), true, 512, JSON_THROW_ON_ERROR);
foreach ($cases as $c) {
    $message = new ManagerRequestCommand(
        containerId: $c['containerId'],
        correlationId: $c['correlationId'],
        action: $c['action'],
        command: $c['command'],
        args: $c['args'],
        timeout: $c['timeout'],
    );
    $stamps = [new BusNameStamp('messenger.bus.default')];
    if (!empty($c['retried'])) {
        $stamps[] = new TransportMessageIdStamp(134);
        $stamps[] = ErrorDetailsStamp::create(new \RuntimeException('Marvin Manager did not answer in time'));
        $stamps[] = new DelayStamp(0);
        $stamps[] = new RedeliveryStamp(1);
    }
    $transport->send(new Envelope($message, $stamps));
}
echo count($cases), " dispatched\n";
