package keyvault

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// receiptPrefix starts every receipt's text; receiptType is what the engine key signs it under (DSSE PAE).
const (
	receiptPrefix = "KVR1."
	receiptType   = "keyvault/receipt/v1"
	receiptFixed  = 1 + 8 + 8 + 8 + 8 // version, serial, at ms, event index, supplier id
	serialAlpha   = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)

// Receipt is what a redeem receipt says, once VerifyReceipt found the store's engine key signed it.
type Receipt struct {
	Serial       string // the key's public serial, e.g. 7KQ2-00A-00031 (never the key)
	Batch        string // its batch, e.g. 7KQ2-00A
	SupplierID   string // the supplier's id (hex)
	SupplierName string
	OrderID      string // the order the key was redeemed for
	RedeemedAt   string // ISO 8601 UTC, with milliseconds, as the service answers redeemed_at
	EventIndex   uint64 // the redeem's index in the store's signed event log
}

// ReceiptError says why a receipt was refused: not a receipt, damaged, or not signed by that engine key.
type ReceiptError struct{ Reason string }

func (e *ReceiptError) Error() string { return "keyvault: receipt refused: " + e.Reason }

// ReadEngineKey reads a store's engine public key from its public identity file (engine.pub, made by
// `keyvault --store DIR identity show --public`). Check its fingerprint with the store's operator out of band.
func ReadEngineKey(file []byte) (ed25519.PublicKey, error) {
	var doc struct {
		Kind      string   `json:"kind"`
		Version   int      `json:"version"`
		PublicKey string   `json:"public_key"`
		Roles     []string `json:"roles"`
	}
	if err := json.Unmarshal(file, &doc); err != nil || doc.Kind != "keyvault-public-identity" || doc.Version != 1 {
		return nil, &ReceiptError{"that is not a keyvault public identity file (engine.pub): make one with " +
			"`keyvault --store DIR identity show --public`"}
	}
	key, err := base64.StdEncoding.DecodeString(doc.PublicKey)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return nil, &ReceiptError{"the identity file's public_key is not an Ed25519 key: get the file again"}
	}
	engine := false
	for _, role := range doc.Roles {
		engine = engine || role == "engine"
	}
	if !engine {
		return nil, &ReceiptError{"that identity is not a store's engine key (a supplier's never signs receipts): " +
			"use the store's engine.pub"}
	}
	return ed25519.PublicKey(key), nil
}

// VerifyReceipt checks a receipt (KVR1.…) offline against the engine key of the store that made it, and says
// what it vouches for; a *ReceiptError when it is damaged, truncated, or signed by another key. It proves the
// redeem was recorded by that store, not that the key is still unspent elsewhere.
func VerifyReceipt(receipt string, engineKey ed25519.PublicKey) (Receipt, error) {
	text := strings.TrimSpace(receipt)
	if !strings.HasPrefix(text, receiptPrefix) {
		return Receipt{}, &ReceiptError{"not a keyvault receipt (a receipt starts KVR1.)"}
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(text[len(receiptPrefix):])
	if err != nil || len(raw) < receiptFixed+2+ed25519.SignatureSize {
		return Receipt{}, &ReceiptError{"the receipt is damaged or cut short: copy it whole"}
	}
	if len(engineKey) != ed25519.PublicKeySize {
		return Receipt{}, &ReceiptError{"the engine key is not an Ed25519 public key: read it with ReadEngineKey"}
	}
	body, signature := raw[:len(raw)-ed25519.SignatureSize], raw[len(raw)-ed25519.SignatureSize:]
	signed := []byte(fmt.Sprintf("DSSEv1 %d %s %d ", len(receiptType), receiptType, len(body)))
	if !ed25519.Verify(engineKey, append(signed, body...), signature) {
		return Receipt{}, &ReceiptError{"the signature does not verify with this engine key: the receipt was " +
			"altered, or another store made it"}
	}
	if body[0] != 1 {
		return Receipt{}, &ReceiptError{fmt.Sprintf("the receipt is of version %d; this client reads version 1", body[0])}
	}
	serial := binary.BigEndian.Uint64(body[1:9])
	at := int64(binary.BigEndian.Uint64(body[9:17]))
	r := Receipt{EventIndex: binary.BigEndian.Uint64(body[17:25]), SupplierID: fmt.Sprintf("%x", body[25:33])}
	rest := body[receiptFixed:]
	var texts [2]string
	for i := range texts {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) || !utf8.Valid(rest[1:1+int(rest[0])]) {
			return Receipt{}, &ReceiptError{"the receipt's supplier name or order id is damaged"}
		}
		texts[i], rest = string(rest[1:1+int(rest[0])]), rest[1+int(rest[0]):]
	}
	if len(rest) != 0 {
		return Receipt{}, &ReceiptError{"the receipt has extra bytes after its order id"}
	}
	symbols := serialSymbols(serial)
	r.Serial, r.Batch = symbols[:4]+"-"+symbols[4:7]+"-"+symbols[7:], symbols[:4]+"-"+symbols[4:7]
	r.SupplierName, r.OrderID = texts[0], texts[1]
	r.RedeemedAt = time.UnixMilli(at).UTC().Format("2006-01-02T15:04:05.000Z")
	return r, nil
}

// serialSymbols is a 60-bit serial's 12 symbols (5 bits each, most significant first).
func serialSymbols(serial uint64) string {
	var b bytes.Buffer
	for i := 11; i >= 0; i-- {
		b.WriteByte(serialAlpha[(serial>>(5*uint(i)))&31])
	}
	return b.String()
}
