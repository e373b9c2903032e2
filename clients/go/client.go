// Package keyvault is a client of the keyvault HTTP service: verify, redeem and trace card keys.
//
// Every method takes a context first and returns typed answers or an error: *ProblemError for a
// problem document (match on Type), *TransportError when the service cannot be reached or answers
// outside its API. Redeems, holds, confirms and releases answered 503, or lost on the way, are retried
// with the same order id, which the service makes safe.
package keyvault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// route is one operation: its method, its path, and the name of its request schema in /v1/openapi.json.
type route struct{ method, path, schema string }

// routes are the operations the client calls (the tests check each against the served document).
var routes = map[string]route{
	"verify":     {"POST", "/v1/verify", "VerifyRequest"},
	"redeem":     {"POST", "/v1/redeem", "RedeemRequest"},
	"redeemMany": {"POST", "/v1/redeem-many", "RedeemManyRequest"},
	"void":       {"POST", "/v1/void", "VoidRequest"},
	"blacklist":  {"POST", "/v1/blacklist", "BlacklistRequest"},
	"lift":       {"POST", "/v1/blacklist/lift", "BlacklistRequest"},
	"hold":       {"POST", "/v1/hold", "HoldRequest"},
	"confirm":    {"POST", "/v1/confirm", "OrderRequest"},
	"release":    {"POST", "/v1/release", "OrderRequest"},
	"order":      {"GET", "/v1/orders/{order_id}", ""},
	"stats":      {"GET", "/v1/stats", ""},
	"trace":      {"GET", "/v1/trace/{serial}", ""},
	"receipt":    {"GET", "/v1/receipts/{serial}", ""},
	"openapi":    {"GET", "/v1/openapi.json", ""},
}

// The request bodies, one type per served schema. An empty Client is left out (the service wants 1-63 characters).
type verifyRequest struct {
	Keys   []string `json:"keys"`
	Client string   `json:"client,omitempty"`
}

type redeemRequest struct {
	Key     string `json:"key"`
	OrderID string `json:"order_id"`
	Client  string `json:"client,omitempty"`
	Receipt bool   `json:"receipt,omitempty"`
}

type redeemManyRequest struct {
	Items  []RedeemItem `json:"items"`
	Client string       `json:"client,omitempty"`
}

type voidRequest struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
}

type blacklistRequest struct {
	Level  Level  `json:"level"`
	Target string `json:"target"`
	Reason string `json:"reason"`
}

type holdRequest struct {
	Key     string  `json:"key"`
	OrderID string  `json:"order_id"`
	TTL     float64 `json:"ttl"` // seconds
	Client  string  `json:"client,omitempty"`
}

type orderRequest struct {
	OrderID string `json:"order_id"`
}

type resultsAnswer struct {
	Results []Result `json:"results"`
}

// maxAnswer bounds what the client reads of one answer (a trace bundle is the largest).
const maxAnswer = 256 << 20

// Client talks to one keyvault service with one token. It is safe for concurrent use.
type Client struct {
	base       string
	token      string
	http       *http.Client
	retries    int
	backoff    time.Duration
	maxBackoff time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds each HTTP exchange (default 10 s); a context deadline bounds a whole call, retries included.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) {
		if c.http == nil {
			return // New refuses a nil client
		}
		h := *c.http // a copy: an *http.Client passed with WithHTTPClient is not changed
		h.Timeout = d
		c.http = &h
	}
}

// WithHTTPClient uses h (its Timeout included) instead of the default client.
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithRedeemRetries sets how often a redeem answered 503 or lost in transit is retried with the same order id
// (default 4; 0: never), the wait before the first retry (default 200 ms, doubled each time), and the longest
// wait (default 5 s, also the cap on Retry-After).
func WithRedeemRetries(retries int, backoff, maxBackoff time.Duration) Option {
	return func(c *Client) { c.retries, c.backoff, c.maxBackoff = retries, backoff, maxBackoff }
}

// New returns a client of the service at baseURL (e.g. "https://kv.example.net", no /v1) with a bearer token.
func New(baseURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("keyvault: baseURL must be http(s)://HOST[:PORT]; pass the service's address")
	}
	if token == "" || strings.IndexFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return nil, errors.New("keyvault: token must be the printable token `keyvault token create` printed")
	}
	c := &Client{base: strings.TrimRight(baseURL, "/"), token: token, http: &http.Client{Timeout: 10 * time.Second},
		retries: 4, backoff: 200 * time.Millisecond, maxBackoff: 5 * time.Second}
	for _, opt := range opts {
		opt(c)
	}
	if c.http == nil || c.http.Timeout < 0 || c.retries < 0 || c.backoff < 0 || c.maxBackoff < 0 {
		return nil, errors.New("keyvault: timeouts, retries and backoffs must not be negative")
	}
	return c, nil
}

// Verify checks one key without spending it; client is the shopper's account or IP ("" for none).
func (c *Client) Verify(ctx context.Context, key, client string) (Result, error) {
	results, err := c.VerifyMany(ctx, []string{key}, client)
	if err != nil {
		return Result{}, err
	}
	return results[0], nil
}

// VerifyMany checks many keys without spending them: one Result per key, in input order.
func (c *Client) VerifyMany(ctx context.Context, keys []string, client string) ([]Result, error) {
	var answer resultsAnswer
	rid, err := c.call(ctx, "verify", verifyBody(keys, client), 0, &answer)
	if err != nil {
		return nil, err
	}
	return c.checkCount("verify", answer.Results, len(keys), rid)
}

// Redeem spends key for orderID, durably; a retry with the same order id gets the first answer.
func (c *Client) Redeem(ctx context.Context, key, orderID, client string) (Result, error) {
	var result Result
	rid, err := c.call(ctx, "redeem", redeemRequest{Key: key, OrderID: orderID, Client: client}, c.retries, &result)
	result.RequestID = rid
	return result, c.checkResult("redeem", result, err)
}

// RedeemWithReceipt is Redeem, and an accepted answer carries Receipt: the redeem signed by the store's
// engine key, which `keyvault verify-receipt` checks offline (it costs the service a signature).
func (c *Client) RedeemWithReceipt(ctx context.Context, key, orderID, client string) (Result, error) {
	var result Result
	body := redeemRequest{Key: key, OrderID: orderID, Client: client, Receipt: true}
	rid, err := c.call(ctx, "redeem", body, c.retries, &result)
	result.RequestID = rid
	return result, c.checkResult("redeem", result, err)
}

// RedeemMany redeems many (key, order) pairs in one durable commit: one Result per item, in input order.
func (c *Client) RedeemMany(ctx context.Context, items []RedeemItem, client string) ([]Result, error) {
	var answer resultsAnswer
	rid, err := c.call(ctx, "redeemMany", redeemManyBody(items, client), c.retries, &answer)
	if err != nil {
		return nil, err
	}
	return c.checkCount("redeemMany", answer.Results, len(items), rid)
}

// Void withdraws an unused key (named by the key or its serial), saying why. Needs an admin token.
func (c *Client) Void(ctx context.Context, keyOrSerial, reason string) (Result, error) {
	var result Result
	rid, err := c.call(ctx, "void", voidRequest{Key: keyOrSerial, Reason: reason}, 0, &result)
	result.RequestID = rid
	return result, c.checkResult("void", result, err)
}

// Blacklist blacklists a key, serial, batch or supplier. Needs an admin token.
func (c *Client) Blacklist(ctx context.Context, level Level, target, reason string) (BlacklistEntry, error) {
	var entry BlacklistEntry
	_, err := c.call(ctx, "blacklist", blacklistRequest{level, target, reason}, 0, &entry)
	return entry, err
}

// Lift lifts a blacklist entry; lifting needs a reason too. Needs an admin token.
func (c *Client) Lift(ctx context.Context, level Level, target, reason string) (BlacklistEntry, error) {
	var entry BlacklistEntry
	_, err := c.call(ctx, "lift", blacklistRequest{level, target, reason}, 0, &entry)
	return entry, err
}

// Hold reserves key for orderID for ttl (1 s to 7 days) while its payment is pending: StatusHeld with
// ExpiresAt, answered once the hold is on disk. A retry with the same order id gets the same answer (the first
// expiry); another order is answered StatusHeld naming no order. Retried on 503 like a redeem. client is the
// shopper's account or IP whose refusal budget the hold is charged to ("" for none), as on Verify and Redeem.
func (c *Client) Hold(ctx context.Context, key, orderID string, ttl time.Duration, client string) (Result, error) {
	var result Result
	body := holdRequest{Key: key, OrderID: orderID, TTL: ttl.Seconds(), Client: client}
	rid, err := c.call(ctx, "hold", body, c.retries, &result)
	result.RequestID = rid
	return result, c.checkResult("hold", result, err)
}

// Confirm redeems every key orderID holds, in one durable commit: one Result per key (StatusAccepted, or
// StatusExpiredHold, StatusReleased, StatusVoid, StatusBlacklisted). A retry gets the same answers. An order
// that held nothing is a *ProblemError not-found (404).
func (c *Client) Confirm(ctx context.Context, orderID string) ([]Result, error) {
	return c.orderCall(ctx, "confirm", orderID)
}

// Release gives up every hold of orderID: one Result per key (StatusReleased); a retry answers the same, and a
// later Confirm of the order answers StatusReleased. An order that held nothing is a *ProblemError not-found.
func (c *Client) Release(ctx context.Context, orderID string) ([]Result, error) {
	return c.orderCall(ctx, "release", orderID)
}

// Order lists every key (its serial, never the key) orderID holds or held, with states, times and the events.
// Needs a redeem token; not retried (the caller decides).
func (c *Client) Order(ctx context.Context, orderID string) (Order, error) {
	var order Order
	path := strings.Replace(routes["order"].path, "{order_id}", url.PathEscape(orderID), 1)
	rid, err := c.send(ctx, "GET", path, nil, &order)
	order.RequestID = rid
	if err == nil && order.OrderID == "" {
		err = &TransportError{Op: "GET " + routes["order"].path, StatusCode: 200, RequestID: rid,
			Err: errors.New("the answer is not an order")}
	}
	return order, err
}

// orderCall is a confirm or a release of orderID: any number of Results, retried like a redeem.
func (c *Client) orderCall(ctx context.Context, op, orderID string) ([]Result, error) {
	var answer resultsAnswer
	rid, err := c.call(ctx, op, orderRequest{orderID}, c.retries, &answer)
	if err != nil {
		return nil, err
	}
	return c.checkCount(op, answer.Results, -1, rid)
}

// Trace tells where the key with this public serial came from and what happened to it
// (bundle: the offline bundle `keyvault verify-bundle` checks). Needs a redeem token.
func (c *Client) Trace(ctx context.Context, serial string, bundle bool) (map[string]any, error) {
	path := strings.Replace(routes["trace"].path, "{serial}", url.PathEscape(serial), 1)
	if bundle {
		path += "?bundle=1"
	}
	var doc map[string]any
	_, err := c.send(ctx, "GET", path, nil, &doc)
	return doc, err
}

// Receipt is the engine-signed receipt (KVR1.…) of the redeem of the key with this public serial, the same text on
// every call: `keyvault verify-receipt` checks it offline. A key not redeemed here is a *ProblemError not-found.
// Needs a redeem token.
func (c *Client) Receipt(ctx context.Context, serial string) (string, error) {
	var answer struct {
		Serial  string `json:"serial"`
		Receipt string `json:"receipt"`
	}
	path := strings.Replace(routes["receipt"].path, "{serial}", url.PathEscape(serial), 1)
	rid, err := c.send(ctx, "GET", path, nil, &answer)
	if err == nil && (answer.Receipt == "" || answer.Serial != serial) {
		err = &TransportError{Op: "GET " + routes["receipt"].path, StatusCode: 200, RequestID: rid,
			Err: errors.New("the answer is not a receipt of that serial")}
	}
	return answer.Receipt, err
}

// Stats returns counts per supplier and batch. Needs an admin token.
func (c *Client) Stats(ctx context.Context) (map[string]any, error) {
	var doc map[string]any
	_, err := c.send(ctx, "GET", routes["stats"].path, nil, &doc)
	return doc, err
}

// OpenAPI returns the service's OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) (map[string]any, error) {
	var doc map[string]any
	_, err := c.send(ctx, "GET", routes["openapi"].path, nil, &doc)
	return doc, err
}

func verifyBody(keys []string, client string) verifyRequest {
	if keys == nil {
		keys = []string{} // a list, never null
	}
	return verifyRequest{Keys: keys, Client: client}
}

func redeemManyBody(items []RedeemItem, client string) redeemManyRequest {
	if items == nil {
		items = []RedeemItem{}
	}
	return redeemManyRequest{Items: items, Client: client}
}

// checkCount checks that results holds want answers (-1: any number), each with a status, and sets their RequestID.
func (c *Client) checkCount(op string, results []Result, want int, rid string) ([]Result, error) {
	if want >= 0 && len(results) != want {
		return nil, &TransportError{Op: op, StatusCode: 200, RequestID: rid,
			Err: fmt.Errorf("the service answered %d results for %d keys", len(results), want)}
	}
	for i := range results {
		if results[i].Status == "" {
			return nil, &TransportError{Op: op, StatusCode: 200, RequestID: rid, Err: errors.New("a result without a status")}
		}
		results[i].RequestID = rid
	}
	return results, nil
}

func (c *Client) checkResult(op string, r Result, err error) error {
	if err == nil && r.Status == "" {
		return &TransportError{Op: op, StatusCode: 200, RequestID: r.RequestID, Err: errors.New("the answer is not a result")}
	}
	return err
}

// call runs one operation of routes with body, retrying up to retries times on a 503 or a lost exchange;
// the request id of the last answer.
func (c *Client) call(ctx context.Context, op string, body any, retries int, out any) (string, error) {
	r := routes[op]
	for attempt := 0; ; attempt++ {
		rid, err := c.send(ctx, r.method, r.path, body, out)
		var problem *ProblemError
		var transport *TransportError
		retryable := errors.As(err, &transport) || (errors.As(err, &problem) && problem.Status == 503)
		if err == nil || !retryable || attempt >= retries || ctx.Err() != nil {
			return rid, err
		}
		wait := c.backoff << uint(attempt)
		if wait < 0 || wait > c.maxBackoff { // < 0: shifted past int64
			wait = c.maxBackoff
		}
		if problem != nil && problem.RetryAfter > wait {
			wait = problem.RetryAfter
			if wait > c.maxBackoff {
				wait = c.maxBackoff
			}
		}
		wait += time.Duration(rand.Int63n(int64(wait)/4 + 1))
		select {
		case <-ctx.Done():
			return rid, &TransportError{Op: r.method + " " + r.path, Err: ctx.Err()}
		case <-time.After(wait):
		}
	}
}

// requestIDKey is the context key of ContextWithRequestID.
type requestIDKey struct{}

// ContextWithRequestID makes every request sent with ctx carry X-Request-Id: id (1 to 128 visible ASCII
// characters; the service makes its own for anything else). The service logs it and returns it; results and
// errors carry the id the service used (RequestID). Retries of one call send the same id.
func ContextWithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// send is one HTTP exchange: out gets the decoded 200 answer, or the error says why not; with the service's
// X-Request-Id ("" when there was no answer).
func (c *Client) send(ctx context.Context, method, path string, body any, out any) (string, error) {
	op := method + " " + strings.SplitN(path, "?", 2)[0]
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return "", fmt.Errorf("keyvault: %s: the request cannot be encoded: %w", op, err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, reader)
	if err != nil {
		return "", &TransportError{Op: op, Err: err}
	}
	if id, _ := ctx.Value(requestIDKey{}).(string); id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", "keyvault-go/1")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error repeats the URL, which holds no key or token: keys never travel in URLs.
		return "", &TransportError{Op: op, Err: err}
	}
	defer resp.Body.Close()
	rid := resp.Header.Get("X-Request-Id")
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return rid, &TransportError{Op: op, StatusCode: resp.StatusCode, RequestID: rid, Err: err}
	}
	kind, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode == http.StatusOK && kind == "application/json" {
		if err := json.Unmarshal(raw, out); err != nil {
			return rid, &TransportError{Op: op, StatusCode: 200, RequestID: rid,
				Err: fmt.Errorf("the answer does not decode: %v", err)}
		}
		return rid, nil
	}
	if kind == "application/problem+json" {
		var p ProblemError
		if json.Unmarshal(raw, &p) == nil && p.Type != "" && p.Status != 0 {
			if secs, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil && secs > 0 {
				p.RetryAfter = time.Duration(secs * float64(time.Second))
			}
			if p.RequestID == "" {
				p.RequestID = rid
			}
			return rid, &p
		}
	}
	return rid, &TransportError{Op: op, StatusCode: resp.StatusCode, RequestID: rid,
		Err: fmt.Errorf("HTTP %d without a problem document (a proxy in between?)", resp.StatusCode)}
}
