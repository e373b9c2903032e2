package keyvault

// Status is the outcome of a verify, redeem or void (the service's Result "status").
type Status string

// Every status a key's answer can carry.
const (
	StatusValid       Status = "valid"         // verify: the key would redeem now
	StatusAccepted    Status = "accepted"      // redeem: this order holds the key (also on a retry)
	StatusMalformed   Status = "malformed"     // not a key; Group names the group at fault when it can
	StatusUnknown     Status = "unknown"       // well-formed, but no such key in this store
	StatusRedeemed    Status = "redeemed"      // already redeemed, by OrderID at RedeemedAt
	StatusVoid        Status = "void"          // withdrawn; Reason says why
	StatusBlacklisted Status = "blacklisted"   // refused by a blacklist entry at Level
	StatusExpired     Status = "expired"       // the batch's validity window has ended
	StatusNotYetValid Status = "not_yet_valid" // the batch's validity window has not begun
	StatusThrottled   Status = "throttled"     // the client was refused too often: the key was not looked at
	StatusDamaged     Status = "damaged"       // the store's record of this key is damaged: nothing was decided
	StatusHeld        Status = "held"          // hold: this order holds the key until ExpiresAt; else another does
	StatusExpiredHold Status = "expired_hold"  // confirm: the order's hold ended first: hold the key again
	StatusReleased    Status = "released"      // release: the order's hold is given up
	StatusExhausted   Status = "exhausted"     // a count-limited key has no use left
)

// AllStatuses lists every status, in the service's order.
var AllStatuses = []Status{StatusValid, StatusAccepted, StatusMalformed, StatusUnknown, StatusRedeemed,
	StatusVoid, StatusBlacklisted, StatusExpired, StatusNotYetValid, StatusThrottled, StatusDamaged,
	StatusHeld, StatusExpiredHold, StatusReleased, StatusExhausted}

// OK reports whether the status lets a key through (valid or accepted).
func (s Status) OK() bool { return s == StatusValid || s == StatusAccepted }

// Level is what a blacklist entry covers.
type Level string

// Every blacklist level.
const (
	LevelKey      Level = "key"
	LevelSerial   Level = "serial"
	LevelBatch    Level = "batch"
	LevelSupplier Level = "supplier"
)

// AllLevels lists every blacklist level.
var AllLevels = []Level{LevelKey, LevelSerial, LevelBatch, LevelSupplier}

// Result is one key's answer. It never holds the key: only its public serial.
// A field the answer does not carry is "" (Group: 0; groups count from 1).
type Result struct {
	Status       Status `json:"status"`
	Serial       string `json:"serial"`
	Batch        string `json:"batch"`
	Supplier     string `json:"supplier"`
	SupplierName string `json:"supplier_name"`
	Product      string `json:"product"`
	OrderID      string `json:"order_id"`
	RedeemedAt   string `json:"redeemed_at"`
	VoidedAt     string `json:"voided_at"`
	Reason       string `json:"reason"`
	Level        string `json:"level"`
	Group        int    `json:"group"`
	Message      string `json:"message"`
	UsesLeft     *int   `json:"uses_left"`  // count-limited keys: uses not yet spent; nil for a single-use key
	ExpiresAt    string `json:"expires_at"` // a hold's end
	Receipt      string `json:"receipt"`    // RedeemWithReceipt, when accepted: the engine-signed receipt (KVR1.…)
	// RequestID is the service's id of the request that answered (its X-Request-Id), not part of the answer.
	RequestID string `json:"-"`
}

// OK reports whether the key got through (valid or accepted).
func (r Result) OK() bool { return r.Status.OK() }

// BlacklistEntry is a blacklist entry as added or lifted.
type BlacklistEntry struct {
	Level  string `json:"level"`
	Target string `json:"target"`
	Reason string `json:"reason"`
	At     string `json:"at"`
}

// RedeemItem is one (key, order) pair of a RedeemMany.
type RedeemItem struct {
	Key     string `json:"key"`
	OrderID string `json:"order_id"`
}

// OrderState is where one key of an order stands.
type OrderState string

// Every state of a key of an order.
const (
	OrderHeld     OrderState = "held"     // held for the order until ExpiresAt
	OrderRedeemed OrderState = "redeemed" // confirmed (or used, for a count-limited key) at RedeemedAt
	OrderReleased OrderState = "released" // the order gave its hold up at ReleasedAt
	OrderExpired  OrderState = "expired"  // the hold ended at ExpiredAt without a confirm
	OrderVoid     OrderState = "void"     // the key was voided at VoidedAt while the order held it: never confirmed
)

// AllOrderStates lists every state of a key of an order.
var AllOrderStates = []OrderState{OrderHeld, OrderRedeemed, OrderReleased, OrderExpired, OrderVoid}

// Order is what an order holds or held (GET /v1/orders/{order_id}): its keys, by serial, and its events.
type Order struct {
	OrderID string       `json:"order_id"`
	Keys    []OrderKey   `json:"keys"`   // one per key, in the order the order first touched them
	Events  []OrderEvent `json:"events"` // the order's checkout events, oldest first
	// RequestID is the service's id of the request that answered (its X-Request-Id), not part of the answer.
	RequestID string `json:"-"`
}

// Key is the entry of the key with this serial, and whether the order ever held or used it.
func (o Order) Key(serial string) (OrderKey, bool) {
	for _, k := range o.Keys {
		if k.Serial == serial {
			return k, true
		}
	}
	return OrderKey{}, false
}

// OrderKey is one key of an order: its serial (never the key), its state, and when each step happened
// (ISO 8601 UTC; "" for a step that did not happen).
type OrderKey struct {
	Serial     string     `json:"serial"`
	State      OrderState `json:"state"`
	HeldAt     string     `json:"held_at"`
	ExpiresAt  string     `json:"expires_at"`
	RedeemedAt string     `json:"redeemed_at"`
	ReleasedAt string     `json:"released_at"`
	ExpiredAt  string     `json:"expired_at"`
	UsesLeft   *int       `json:"uses_left"` // a count-limited key: the uses left after this order's use; else nil
	VoidedAt   string     `json:"voided_at"` // OrderVoid: when the key was voided
}

// OrderEvent is one checkout event of an order, as the store's signed event log holds it.
type OrderEvent struct {
	Index     int64  `json:"index"` // its index in the store's log
	Type      string `json:"type"`  // hold, confirm, use, release, expire or redeem (each redeem, held or plain)
	At        string `json:"at"`    // when (ISO 8601 UTC)
	Serial    string `json:"serial"`
	OrderID   string `json:"order_id"`
	ExpiresAt string `json:"expires_at"` // a hold's end (hold and expire events)
	UsesLeft  *int   `json:"uses_left"`  // a count-limited key's uses left after this use (use events); else nil
}
