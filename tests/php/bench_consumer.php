<?php
// php bench_consumer.php DB TABLE QUEUE RESPONSE_QUEUE COUNT
// A PHP Symfony consumer doing the manager's work for a no-op action: take a request, send a
// response, acknowledge. Prints "<count> <seconds>".

declare(strict_types=1);

require __DIR__ . '/bootstrap.php';

use EnderLab\MarvinManagerBundle\Messenger\ManagerRequestCommand;
use EnderLab\MarvinManagerBundle\Messenger\ManagerResponseCommand;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\Messenger\Envelope;
use Symfony\Component\Messenger\EventListener\StopWorkerOnMessageLimitListener;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Stamp\BusNameStamp;
use Symfony\Component\Messenger\Worker;

[, $db, $table, $queue, $responseQueue, $count] = $argv;
$requests = marvin_transport($db, $table, $queue, 'php');
$responses = marvin_transport($db, $table, $responseQueue, 'php');
$handled = 0;
$handler = function (ManagerRequestCommand $r) use ($responses, &$handled) {
    $responses->send(new Envelope(
        new ManagerResponseCommand($r->correlationId, 'container', $r->containerId, $r->action, true, null, null, []),
        [new BusNameStamp('messenger.bus.default')],
    ));
    $handled++;
};
$bus = new MessageBus([new HandleMessageMiddleware(new HandlersLocator([ManagerRequestCommand::class => [$handler]]))]);
$events = new EventDispatcher();
$events->addSubscriber(new StopWorkerOnMessageLimitListener((int) $count));
$worker = new Worker(['requests' => $requests], $bus, $events);
$t = microtime(true);
$worker->run(['sleep' => 1000]);
printf("%d %.6f\n", $handled, microtime(true) - $t);
