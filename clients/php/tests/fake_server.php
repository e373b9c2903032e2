<?php
// A stand-in service for the retry and timeout tests, run by `php -S` (tests/run.php starts it).
// FAKE_DIR holds `plan` (one answer per line: a status code, or `sleep`), and `log` gets one line per request.
declare(strict_types=1);

$dir = getenv('FAKE_DIR');
$plan = file($dir . '/plan', FILE_IGNORE_NEW_LINES) ?: [];
$log = $dir . '/log';
$n = is_file($log) ? count(file($log)) : 0;
file_put_contents($log, $_SERVER['REQUEST_METHOD'] . ' ' . $_SERVER['REQUEST_URI'] . ' '
    . str_replace("\n", ' ', (string) file_get_contents('php://input')) . ' id=' . ($_SERVER['HTTP_X_REQUEST_ID'] ?? '-')
    . "\n", FILE_APPEND);
$step = $plan[min($n, count($plan) - 1)] ?? '200';
if ($step === 'sleep') {
    sleep(3);
    $step = '200';
}
if ($step === 'html') {
    http_response_code(502);
    header('Content-Type: text/html');
    echo '<html>bad gateway</html>';
    return true;
}
$code = (int) $step;
http_response_code($code);
if ($code === 200) {
    header('Content-Type: application/json');
    $body = json_decode((string) file_get_contents('php://input'), true);
    $result = ['status' => 'accepted', 'serial' => 'S-1', 'batch' => 'B', 'supplier' => 'X',
               'order_id' => $body['order_id'] ?? null];
    $many = in_array(strtok($_SERVER['REQUEST_URI'], '?'), ['/v1/confirm', '/v1/release'], true);
    echo json_encode($many ? ['results' => [$result]] : $result);  // confirm and release answer a list
} else {
    header('Content-Type: application/problem+json');
    echo json_encode(['type' => 'urn:keyvault:problem:' . ($code === 503 ? 'store-unavailable' : 'invalid-request'),
                      'title' => 'fake', 'status' => $code, 'detail' => 'a fake answer']);
}
return true;
