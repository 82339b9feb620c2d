<?php
// php consume.php DB TABLE QUEUE php|json COUNT OUT.jsonl
// Runs Symfony's real Worker on the queue until COUNT ManagerResponseCommand messages were
// handled (or 30 s passed) and writes each one's fields as a JSON line. A row that does not
// decode makes the Worker throw: the script then fails.

declare(strict_types=1);

require __DIR__ . '/bootstrap.php';

use EnderLab\MarvinManagerBundle\Messenger\ManagerResponseCommand;
use Symfony\Component\EventDispatcher\EventDispatcher;
use Symfony\Component\Messenger\EventListener\StopWorkerOnMessageLimitListener;
use Symfony\Component\Messenger\EventListener\StopWorkerOnTimeLimitListener;
use Symfony\Component\Messenger\Event\WorkerMessageFailedEvent;
use Symfony\Component\Messenger\Handler\HandlersLocator;
use Symfony\Component\Messenger\MessageBus;
use Symfony\Component\Messenger\Middleware\HandleMessageMiddleware;
use Symfony\Component\Messenger\Worker;

[, $db, $table, $queue, $serializer, $count, $out] = $argv;
$transport = marvin_transport($db, $table, $queue, $serializer);
$lines = fopen($out, 'w');
$handler = function (ManagerResponseCommand $r) use ($lines) {
    fwrite($lines, json_encode([
        'class' => get_class($r),
        'correlationId' => $r->correlationId,
        'entityType' => $r->entityType,
        'entityId' => $r->entityId,
        'action' => $r->action,
        'success' => $r->success,
        'output' => $r->output,
        'error' => $r->error,
        'metadata' => $r->metadata,
    ], JSON_THROW_ON_ERROR | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION) . "\n");
};
$bus = new MessageBus([new HandleMessageMiddleware(new HandlersLocator([
    ManagerResponseCommand::class => [$handler],
]))]);
$events = new EventDispatcher();
$events->addSubscriber(new StopWorkerOnMessageLimitListener((int) $count));
$events->addSubscriber(new StopWorkerOnTimeLimitListener(30));
$failures = 0;
$events->addListener(WorkerMessageFailedEvent::class, function (WorkerMessageFailedEvent $e) use (&$failures) {
    $failures++;
    fwrite(STDERR, 'handler failed: ' . $e->getThrowable()->getMessage() . "\n");
});
$worker = new Worker(['responses' => $transport], $bus, $events);
$worker->run(['sleep' => 50000]);
fclose($lines);
exit($failures > 0 ? 1 : 0);
