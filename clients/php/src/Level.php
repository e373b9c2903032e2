<?php
declare(strict_types=1);

namespace Keyvault;

/** What a blacklist entry covers (the `level` of a blacklist or lift request). */
final class Level
{
    public const KEY = 'key';
    public const SERIAL = 'serial';
    public const BATCH = 'batch';
    public const SUPPLIER = 'supplier';

    /** Every level. */
    public const ALL = [self::KEY, self::SERIAL, self::BATCH, self::SUPPLIER];

    private function __construct()
    {
    }
}
