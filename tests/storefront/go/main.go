// Storefront buyers in Go, through the public API of clients/go only (tests/test_storefront.py runs them beside
// the PHP ones). Each buyer, a goroutine, holds keys for orders, pays (confirms) some twice, releases others, lets
// holds expire, races a payment against an expiry and against a void, redeems with receipts, fights the other
// buyers for shared keys and spends count-limited keys. Every answer a buyer was told is printed as one JSON line
// (serials and order ids, never a key) for the test to check against the server's own view.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"time"

	keyvault "keyvault.example/client"
)

var out = json.NewEncoder(os.Stdout)
var outMu sync.Mutex

type line struct {
	Buyer       string `json:"buyer"`
	Step        string `json:"step"`
	Op          string `json:"op"`
	Order       string `json:"order"`
	Status      string `json:"status"`
	Serial      string `json:"serial,omitempty"`
	OrderID     string `json:"order_id,omitempty"`
	UsesLeft    *int   `json:"uses_left"`
	HasUsesLeft bool   `json:"has_uses_left"`
	ExpiresAt   string `json:"expires_at,omitempty"`
	RedeemedAt  string `json:"redeemed_at,omitempty"`
	VoidedAt    string `json:"voided_at,omitempty"`
	Receipt     string `json:"receipt,omitempty"`
	// What the receipt says, checked offline by the Go client against the store's engine key.
	ReceiptSerial string `json:"receipt_serial,omitempty"`
	ReceiptOrder  string `json:"receipt_order,omitempty"`
	ReceiptAt     string `json:"receipt_at,omitempty"`
}

type buyer struct {
	name, run       string
	kv, admin       *keyvault.Client
	own, contested  []string
	limited, shared string
	engine          ed25519.PublicKey
}

func (b *buyer) order(what string) string { return b.run + "-" + b.name + "-" + what }

func (b *buyer) told(step, op, order string, r keyvault.Result) keyvault.Result {
	l := line{Buyer: b.name, Step: step, Op: op, Order: order, Status: string(r.Status), Serial: r.Serial,
		OrderID: r.OrderID, UsesLeft: r.UsesLeft, HasUsesLeft: r.UsesLeft != nil, ExpiresAt: r.ExpiresAt,
		RedeemedAt: r.RedeemedAt, VoidedAt: r.VoidedAt, Receipt: r.Receipt}
	if r.Receipt != "" {
		checked := must(keyvault.VerifyReceipt(r.Receipt, b.engine))
		l.ReceiptSerial, l.ReceiptOrder, l.ReceiptAt = checked.Serial, checked.OrderID, checked.RedeemedAt
	}
	b.print(l)
	return r
}

func (b *buyer) print(l line) {
	outMu.Lock()
	defer outMu.Unlock()
	if err := out.Encode(l); err != nil {
		panic(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func one(rs []keyvault.Result, err error) keyvault.Result {
	if err != nil {
		panic(err)
	}
	if len(rs) != 1 {
		panic(fmt.Sprintf("an order of one key answered %d results", len(rs)))
	}
	return rs[0]
}

// problem is the short name of the problem err is ("answered" for none); anything else stops the buyer.
func problem(err error) string {
	var p *keyvault.ProblemError
	if err == nil {
		return "answered"
	}
	if errors.As(err, &p) {
		return p.Name()
	}
	panic(err)
}

func (b *buyer) run_(ctx context.Context) {
	// 1. A paid order: hold, then two payments confirm it at once (same answer), then its receipt.
	o := b.order("paid")
	b.told("paid", "hold", o, must(b.kv.Hold(ctx, b.own[0], o, time.Minute, b.name)))
	var wg sync.WaitGroup
	paid := make([]keyvault.Result, 2)
	for i := range paid {
		wg.Add(1)
		go func(i int) { defer wg.Done(); paid[i] = one(b.kv.Confirm(ctx, o)) }(i)
	}
	wg.Wait()
	for _, r := range paid {
		b.told("paid", "confirm", o, r)
	}
	receipt := must(b.kv.Receipt(ctx, paid[0].Serial))
	r := paid[0]
	r.Receipt = receipt
	b.told("paid", "receipt", o, r)

	// 2. A payment that failed: released (twice), a late confirm answers released, another order buys the key.
	o = b.order("failed")
	b.told("failed", "hold", o, must(b.kv.Hold(ctx, b.own[1], o, time.Minute, "")))
	b.told("failed", "release", o, one(b.kv.Release(ctx, o)))
	b.told("failed", "release", o, one(b.kv.Release(ctx, o)))
	b.told("failed", "confirm", o, one(b.kv.Confirm(ctx, o)))
	o = b.order("failed-again")
	b.told("failed", "hold", o, must(b.kv.Hold(ctx, b.own[1], o, time.Minute, "")))
	b.told("failed", "confirm", o, one(b.kv.Confirm(ctx, o)))

	// 3. A hold left to expire: the payment comes too late; holding again and paying works.
	o = b.order("late")
	b.told("late", "hold", o, must(b.kv.Hold(ctx, b.own[2], o, time.Second, "")))
	time.Sleep(1600 * time.Millisecond)
	b.told("late", "confirm", o, one(b.kv.Confirm(ctx, o)))
	o = b.order("late-again")
	b.told("late", "hold", o, must(b.kv.Hold(ctx, b.own[2], o, time.Minute, "")))
	b.told("late", "confirm", o, one(b.kv.Confirm(ctx, o)))

	// 4. A payment racing the hold's expiry: either answer, as long as the server agrees.
	o = b.order("race")
	b.told("race", "hold", o, must(b.kv.Hold(ctx, b.own[3], o, 2*time.Second, "")))
	time.Sleep(time.Duration(1700+rand.Intn(600)) * time.Millisecond)
	b.told("race", "confirm", o, one(b.kv.Confirm(ctx, o)))

	// 5. A void racing the payment of a held key: one of them wins, never both.
	o = b.order("voided")
	held := b.told("voided", "hold", o, must(b.kv.Hold(ctx, b.own[4], o, time.Minute, "")))
	var voided, confirmed keyvault.Result
	wg.Add(2)
	go func() { defer wg.Done(); voided = must(b.admin.Void(ctx, held.Serial, "fraud review "+b.name)) }()
	go func() { defer wg.Done(); confirmed = one(b.kv.Confirm(ctx, o)) }()
	wg.Wait()
	b.told("voided", "void", o, voided)
	b.told("voided", "confirm", o, confirmed)

	// 6. A plain redeem with a receipt, retried (same answer, same receipt), then refused to another order.
	o = b.order("direct")
	b.told("direct", "redeem", o, must(b.kv.RedeemWithReceipt(ctx, b.own[5], o, b.name)))
	b.told("direct", "redeem", o, must(b.kv.RedeemWithReceipt(ctx, b.own[5], o, b.name)))
	b.told("direct", "redeem", b.order("direct-other"), must(b.kv.Redeem(ctx, b.own[5], b.order("direct-other"), "")))

	// 7. A payment for an order that never held anything: not-found, and nothing changes.
	o = b.order("ghost")
	_, err := b.kv.Confirm(ctx, o)
	b.print(line{Buyer: b.name, Step: "ghost", Op: "confirm", Order: o, Status: problem(err)})
	_, err = b.kv.Release(ctx, o)
	b.print(line{Buyer: b.name, Step: "ghost", Op: "release", Order: o, Status: problem(err)})

	// 8. Keys every buyer wants at once: one order wins each, pays, and the others are refused.
	for j, key := range b.contested {
		o = b.order(fmt.Sprintf("contested-%d", j))
		held := b.told("contested", "hold", o, must(b.kv.Hold(ctx, key, o, 30*time.Second, "")))
		if held.Status == keyvault.StatusHeld && held.OrderID == o {
			b.told("contested", "confirm", o, one(b.kv.Confirm(ctx, o)))
		}
	}

	// 9. This buyer's own count-limited key: five orders use it, the sixth is refused, a retry answers the same.
	for i := 1; i <= 6; i++ {
		o = b.order(fmt.Sprintf("pass-%d", i))
		b.told("pass", "redeem", o, must(b.kv.RedeemWithReceipt(ctx, b.limited, o, "")))
	}
	b.told("pass", "redeem", b.order("pass-1"), must(b.kv.Redeem(ctx, b.limited, b.order("pass-1"), "")))
	b.told("pass", "verify", "", must(b.kv.Verify(ctx, b.limited, "")))

	// 10. A count-limited key every buyer spends at once, some by hold and payment.
	for i := 1; i <= 3; i++ {
		o = b.order(fmt.Sprintf("shared-pass-%d", i))
		if i == 2 {
			held := b.told("shared-pass", "hold", o, must(b.kv.Hold(ctx, b.shared, o, 30*time.Second, "")))
			if held.Status == keyvault.StatusHeld && held.OrderID == o {
				b.told("shared-pass", "confirm", o, one(b.kv.Confirm(ctx, o)))
			}
		} else {
			b.told("shared-pass", "redeem", o, must(b.kv.Redeem(ctx, b.shared, o, "")))
		}
	}
}

func main() {
	env := func(name string) string {
		v := os.Getenv(name)
		if v == "" {
			fmt.Fprintf(os.Stderr, "%s is not set\n", name)
			os.Exit(2)
		}
		return v
	}
	kv := must(keyvault.New(env("SF_URL"), env("SF_TOKEN"), keyvault.WithTimeout(30*time.Second)))
	admin := must(keyvault.New(env("SF_URL"), env("SF_ADMIN"), keyvault.WithTimeout(30*time.Second)))
	engine := must(keyvault.ReadEngineKey(must(os.ReadFile(env("SF_ENGINE")))))
	names := strings.Split(env("SF_BUYERS"), ",")
	owns, limited := strings.Split(env("SF_OWN"), ";"), strings.Split(env("SF_LIMITED_OWN"), ",")
	var wg sync.WaitGroup
	failed := make(chan string, len(names))
	for i, name := range names {
		b := &buyer{name: name, run: env("SF_RUN"), kv: kv, admin: admin, own: strings.Split(owns[i], ","),
			contested: strings.Split(env("SF_CONTESTED"), ","), limited: limited[i], shared: env("SF_LIMITED_SHARED"),
			engine: engine}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					failed <- fmt.Sprintf("%s: %v", b.name, p)
				}
			}()
			b.run_(keyvault.ContextWithRequestID(context.Background(), "sf-"+b.name))
			b.print(line{Buyer: b.name, Step: "done", Op: "done", Status: "done"})
		}()
	}
	wg.Wait()
	close(failed)
	code := 0
	for f := range failed {
		fmt.Fprintln(os.Stderr, f)
		code = 1
	}
	os.Exit(code)
}
