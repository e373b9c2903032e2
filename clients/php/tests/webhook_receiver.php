<?php
// A webhook receiver for `php -S HOST:PORT tests/webhook_receiver.php`: verifies every delivery with
// Keyvault\Webhook::verify and appends "id <TAB> body" to $KEYVAULT_WEBHOOK_LOG, or answers 400.
declare(strict_types=1);

require __DIR__ . '/../src/autoload.php';

$body = file_get_contents('php://input');
try {
    $id = \Keyvault\Webhook::verify(getenv('KEYVAULT_WEBHOOK_SECRET'), getallheaders(), $body);
} catch (\Keyvault\WebhookException $e) {
    http_response_code(400);
    file_put_contents(getenv('KEYVAULT_WEBHOOK_LOG') . '.refused', $e->getMessage() . "\n", FILE_APPEND | LOCK_EX);
    exit;
}
file_put_contents(getenv('KEYVAULT_WEBHOOK_LOG'), $id . "\t" . $body . "\n", FILE_APPEND | LOCK_EX);
http_response_code(204);
