<?php
// The two classes of EnderLab\MarvinManagerBundle, as the bundle declares them.

declare(strict_types=1);

namespace EnderLab\MarvinManagerBundle\Messenger;

final readonly class ManagerRequestCommand
{
    public function __construct(
        public string $containerId,
        public string $correlationId,
        public string $action,
        public ?string $command = null,
        public array $args = [],
        public int $timeout = 10,
    ) {
    }
}

final readonly class ManagerResponseCommand
{
    public function __construct(
        public string $correlationId,
        public string $entityType,
        public string $entityId,
        public string $action,
        public bool $success = false,
        public ?string $output = null,
        public ?string $error = null,
        public ?array $metadata = [],
    ) {
    }
}
