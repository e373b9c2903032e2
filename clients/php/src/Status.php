<?php
declare(strict_types=1);

namespace Keyvault;

/** Every status a key's answer can carry (the service's Result `status` enum). */
final class Status
{
    public const VALID = 'valid';                 // verify: the key would redeem now
    public const ACCEPTED = 'accepted';           // redeem: this order holds the key (also on a retry)
    public const MALFORMED = 'malformed';         // not a key; `group` names the group at fault when it can
    public const UNKNOWN = 'unknown';             // well-formed, but no such key in this store
    public const REDEEMED = 'redeemed';           // already redeemed, by `orderId` at `redeemedAt`
    public const VOID = 'void';                   // withdrawn; `reason` says why
    public const BLACKLISTED = 'blacklisted';     // refused by a blacklist entry at `level`
    public const EXPIRED = 'expired';             // the batch's validity window has ended
    public const NOT_YET_VALID = 'not_yet_valid'; // the batch's validity window has not begun
    public const THROTTLED = 'throttled';         // the client was refused too often: the key was not looked at
    public const DAMAGED = 'damaged';             // the store's record of this key is damaged: nothing was decided
    public const HELD = 'held';                   // hold: this order holds the key until `expiresAt`; else another does
    public const EXPIRED_HOLD = 'expired_hold';   // confirm: the order's hold ended first: hold the key again
    public const RELEASED = 'released';           // release: the order's hold is given up
    public const EXHAUSTED = 'exhausted';         // a count-limited key has no use left

    /** Every status, in the service's order. */
    public const ALL = [
        self::VALID, self::ACCEPTED, self::MALFORMED, self::UNKNOWN, self::REDEEMED,
        self::VOID, self::BLACKLISTED, self::EXPIRED, self::NOT_YET_VALID, self::THROTTLED, self::DAMAGED,
        self::HELD, self::EXPIRED_HOLD, self::RELEASED, self::EXHAUSTED,
    ];

    /** The statuses that let a key through. */
    public const OK = [self::VALID, self::ACCEPTED];

    private function __construct()
    {
    }
}
