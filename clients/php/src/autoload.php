<?php
// A PSR-4 autoloader for the Keyvault\ namespace, for projects without Composer:
//     require __DIR__ . '/path/to/clients/php/src/autoload.php';
declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefix = 'Keyvault\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
