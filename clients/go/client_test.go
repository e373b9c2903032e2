package keyvault

// Tests against the real service whose address, tokens and keys tests/test_clients.py passes in
// KEYVAULT_TEST_* variables (`make test-clients` starts it), and against httptest stand-ins for retries.

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

type env struct {
	url                    string
	tokens                 map[string]string
	keys, serials, unkown  []string
	run                    string
	limited, limitedSerial string // a count-limited key (limitedUses orders may each redeem it once)
	limitedUses            string
	engine                 string // the store's engine.pub (its path)
}

func served(t *testing.T) env {
	t.Helper()
	url := os.Getenv("KEYVAULT_TEST_URL")
	if url == "" {
		t.Skip("KEYVAULT_TEST_URL is not set: run with `make test-clients` (it starts a server)")
	}
	return env{
		url: url,
		tokens: map[string]string{"verify": os.Getenv("KEYVAULT_TEST_TOKEN_VERIFY"),
			"redeem": os.Getenv("KEYVAULT_TEST_TOKEN_REDEEM"), "admin": os.Getenv("KEYVAULT_TEST_TOKEN_ADMIN")},
		keys:    strings.Split(os.Getenv("KEYVAULT_TEST_KEYS"), ","),
		serials: strings.Split(os.Getenv("KEYVAULT_TEST_SERIALS"), ","),
		unkown:  strings.Split(os.Getenv("KEYVAULT_TEST_UNKNOWN"), ","),
		run:     fmt.Sprintf("go-%d", time.Now().UnixNano()),
		limited: os.Getenv("KEYVAULT_TEST_LIMITED"), limitedSerial: os.Getenv("KEYVAULT_TEST_LIMITED_SERIAL"),
		limitedUses: os.Getenv("KEYVAULT_TEST_LIMITED_USES"), engine: os.Getenv("KEYVAULT_TEST_ENGINE"),
	}
}

func (e env) client(t *testing.T, scope string, opts ...Option) *Client {
	t.Helper()
	c, err := New(e.url, e.tokens[scope], opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// must is v, or a panic (which fails the run) on an error: Go cannot pass a (T, error) pair along with a *testing.T.
func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("unexpected error: %v", err))
	}
	return v
}

func wantStatus(t *testing.T, r Result, want Status) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %q, want %q (%+v)", r.Status, want, r)
	}
}

func wantProblem(t *testing.T, err error, name string, status int) *ProblemError {
	t.Helper()
	var p *ProblemError
	if !errors.As(err, &p) {
		t.Fatalf("want a *ProblemError %s, got %T %v", name, err, err)
	}
	if p.Type != ProblemPrefix+name || p.Status != status || p.Title == "" || p.Detail == "" || p.Name() != name {
		t.Fatalf("want %s %d, got %+v", name, status, p)
	}
	return p
}

// -- the served OpenAPI document ------------------------------------------------------------------

var (
	docOnce sync.Once
	doc     map[string]any
	docErr  error
)

// document is the served OpenAPI document: without a token if the service allows it, else with the verify token.
func document(t *testing.T, e env) map[string]any {
	t.Helper()
	docOnce.Do(func() {
		anon, _ := New(e.url, "kvt_none")
		doc, docErr = anon.OpenAPI(context.Background())
		var p *ProblemError
		if errors.As(docErr, &p) && p.Status == 401 {
			doc, docErr = e.client(t, "verify").OpenAPI(context.Background())
		}
	})
	if docErr != nil {
		t.Fatal(docErr)
	}
	return doc
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }

func schemas(t *testing.T, e env) map[string]any {
	return obj(obj(document(t, e)["components"])["schemas"])
}

func resolve(t *testing.T, schema map[string]any, all map[string]any) map[string]any {
	for {
		ref, ok := schema["$ref"].(string)
		if !ok {
			return schema
		}
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		next := obj(all[name])
		if next == nil {
			t.Fatalf("the document refers to a schema it does not hold: %s", name)
		}
		schema = next
	}
}

var knownKeywords = map[string]bool{"title": true, "description": true, "default": true, "examples": true,
	"type": true, "enum": true, "const": true, "anyOf": true, "oneOf": true, "properties": true, "required": true,
	"additionalProperties": true, "items": true, "minLength": true, "maxLength": true, "maxItems": true,
	"minItems": true, "pattern": true, "format": true, "minimum": true, "maximum": true}

func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		if x == float64(int64(x)) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	default:
		return "object"
	}
}

// mismatch says why value (decoded JSON) does not match schema, or "" when it does: a small JSON Schema checker.
func mismatch(t *testing.T, value any, schema map[string]any, all map[string]any, at string) string {
	schema = resolve(t, schema, all)
	for k := range schema {
		if !knownKeywords[k] {
			t.Fatalf("the schema at %s uses the keyword %q this check does not know (teach client_test.go)", at, k)
		}
	}
	for _, word := range []string{"anyOf", "oneOf"} {
		if branches, ok := schema[word].([]any); ok {
			n := 0
			for _, b := range branches {
				if mismatch(t, value, obj(b), all, at) == "" {
					n++
				}
			}
			if n == 0 || (word == "oneOf" && n != 1) {
				return at + " matches no branch of its " + word
			}
		}
	}
	if ty, ok := schema["type"]; ok {
		types := []any{ty}
		if list, isList := ty.([]any); isList {
			types = list
		}
		is, found := jsonType(value), false
		for _, want := range types {
			found = found || want == is || (want == "number" && is == "integer")
		}
		if !found {
			return fmt.Sprintf("%s is %s, the schema wants %v", at, is, ty)
		}
	}
	if enum, ok := schema["enum"].([]any); ok {
		found := false
		for _, v := range enum {
			found = found || reflect.DeepEqual(v, value)
		}
		if !found {
			return fmt.Sprintf("%s is not one of %v", at, enum)
		}
	}
	if c, ok := schema["const"]; ok && !reflect.DeepEqual(c, value) {
		return fmt.Sprintf("%s is not %v", at, c)
	}
	if n, ok := value.(float64); ok {
		if min, ok := schema["minimum"].(float64); ok && n < min {
			return at + " is under its minimum"
		}
		if max, ok := schema["maximum"].(float64); ok && n > max {
			return at + " is over its maximum"
		}
	}
	if s, ok := value.(string); ok {
		n := float64(utf8.RuneCountInString(s))
		if min, ok := schema["minLength"].(float64); ok && n < min {
			return at + " is too short"
		}
		if max, ok := schema["maxLength"].(float64); ok && n > max {
			return at + " is too long"
		}
		if pat, ok := schema["pattern"].(string); ok && !regexp.MustCompile(pat).MatchString(s) {
			return at + " does not match its pattern"
		}
	}
	if list, ok := value.([]any); ok {
		if max, ok := schema["maxItems"].(float64); ok && float64(len(list)) > max {
			return at + " has too many items"
		}
		if min, ok := schema["minItems"].(float64); ok && float64(len(list)) < min {
			return at + " has too few items"
		}
		if items := obj(schema["items"]); items != nil {
			for i, v := range list {
				if why := mismatch(t, v, items, all, fmt.Sprintf("%s[%d]", at, i)); why != "" {
					return why
				}
			}
		}
	}
	if m, ok := value.(map[string]any); ok {
		props := obj(schema["properties"])
		for _, r := range asList(schema["required"]) {
			if _, ok := m[r.(string)]; !ok {
				return fmt.Sprintf("%s lacks the required field %q", at, r)
			}
		}
		for name, v := range m {
			sub := obj(props[name])
			if sub == nil {
				if schema["additionalProperties"] == false {
					return fmt.Sprintf("%s has the field %q, which the schema does not name", at, name)
				}
				continue
			}
			if why := mismatch(t, v, sub, all, at+"."+name); why != "" {
				return why
			}
		}
	}
	return ""
}

func asList(v any) []any { l, _ := v.([]any); return l }

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// jsonFields are the JSON names of a struct's fields, with the Go kind of each.
func jsonFields(v any) map[string]reflect.Kind {
	out := map[string]reflect.Kind{}
	ty := reflect.TypeOf(v)
	for i := 0; i < ty.NumField(); i++ {
		name := strings.Split(ty.Field(i).Tag.Get("json"), ",")[0]
		if name != "-" {
			field := ty.Field(i).Type
			if field.Kind() == reflect.Pointer { // *int: an integer the answer may leave out
				field = field.Elem()
			}
			out[name] = field.Kind()
		}
	}
	return out
}

// requestSchema is the request schema the served document names for op, after checking the route is served.
func requestSchema(t *testing.T, e env, op string) map[string]any {
	r := routes[op]
	path := obj(obj(document(t, e)["paths"])[r.path])
	served := obj(path[strings.ToLower(r.method)])
	if served == nil {
		t.Fatalf("the service does not serve %s %s, which the client calls for %s", r.method, r.path, op)
	}
	body := obj(served["requestBody"])
	if r.schema == "" {
		if body != nil {
			t.Fatalf("%s %s takes a body the client does not send", r.method, r.path)
		}
		return nil
	}
	ref := obj(obj(obj(body["content"])["application/json"])["schema"])["$ref"]
	if ref != "#/components/schemas/"+r.schema {
		t.Fatalf("%s %s's request schema is %v, the client builds a %s", r.method, r.path, ref, r.schema)
	}
	return obj(schemas(t, e)[r.schema])
}

func TestStatusesAreTheServedEnum(t *testing.T) {
	e := served(t)
	enum := asList(obj(obj(obj(schemas(t, e)["Result"])["properties"])["status"])["enum"])
	var servedNames, mine []string
	for _, s := range enum {
		servedNames = append(servedNames, s.(string))
	}
	for _, s := range AllStatuses {
		mine = append(mine, string(s))
	}
	sort.Strings(servedNames)
	sort.Strings(mine)
	if !reflect.DeepEqual(servedNames, mine) || len(mine) == 0 {
		t.Fatalf("the client's statuses %v, the served enum %v", mine, servedNames)
	}
}

func TestResultMapsTheServedSchema(t *testing.T) {
	e := served(t)
	all := schemas(t, e)
	for name, v := range map[string]any{"Result": Result{}, "BlacklistEntry": BlacklistEntry{}} {
		schema := obj(all[name])
		props := obj(schema["properties"])
		fields := jsonFields(v)
		var mapped []string
		for f := range fields {
			mapped = append(mapped, f)
		}
		sort.Strings(mapped)
		if !reflect.DeepEqual(mapped, sortedKeys(props)) {
			t.Fatalf("%s maps %v, the served schema has %v", name, mapped, sortedKeys(props))
		}
		for f, kind := range fields {
			want := "string"
			if kind == reflect.Int {
				want = "integer"
			}
			sample := map[string]any{"string": "x", "integer": float64(3)}[want]
			if f == "status" {
				sample = string(StatusValid)
			}
			if why := mismatch(t, sample, obj(props[f]), all, name+"."+f); why != "" {
				t.Fatalf("the client reads %s.%s as a %s: %s", name, f, want, why)
			}
		}
	}
	levels := asList(resolve(t, obj(obj(obj(all["BlacklistRequest"])["properties"])["level"]), all)["enum"])
	if len(levels) != len(AllLevels) {
		t.Fatalf("served levels %v, the client's %v", levels, AllLevels)
	}
	for _, l := range AllLevels {
		if mismatch(t, string(l), obj(obj(obj(all["BlacklistRequest"])["properties"])["level"]), all, "level") != "" {
			t.Fatalf("level %q is not served", l)
		}
	}
}

func TestRequestBodiesMatchTheServedSchemas(t *testing.T) {
	e := served(t)
	all := schemas(t, e)
	for op := range routes {
		requestSchema(t, e, op)
	}
	bodies := map[string][]any{ // the first of each has every optional field given
		"verify":     {verifyBody([]string{"K1", "K2"}, "acct-1"), verifyBody(nil, "")},
		"redeem":     {redeemRequest{"K", "SO-1", "acct-1", true}, redeemRequest{Key: "K", OrderID: "SO-1"}},
		"redeemMany": {redeemManyBody([]RedeemItem{{"K", "O"}}, "acct-1"), redeemManyBody(nil, "")},
		"void":       {voidRequest{"K", "refund"}},
		"blacklist":  {blacklistRequest{LevelSerial, "S", "fraud"}},
		"lift":       {blacklistRequest{LevelSupplier, "S", "cleared"}},
		"hold":       {holdRequest{"K", "SO-1", (15 * time.Minute).Seconds(), "acct-1"}, holdRequest{Key: "K", OrderID: "SO-1", TTL: 1.5}},
		"confirm":    {orderRequest{"SO-1"}},
		"release":    {orderRequest{"SO-1"}},
	}
	for op, examples := range bodies {
		schema := requestSchema(t, e, op)
		for i, body := range examples {
			raw, _ := json.Marshal(body)
			var decoded map[string]any
			if err := json.Unmarshal(raw, &decoded); err != nil {
				t.Fatal(err)
			}
			if why := mismatch(t, decoded, schema, all, "$"); why != "" {
				t.Fatalf("%s body %s: %s", op, raw, why)
			}
			if i == 0 && !reflect.DeepEqual(sortedKeys(decoded), sortedKeys(obj(schema["properties"]))) {
				t.Fatalf("%s sends %v, the served schema names %v", op, sortedKeys(decoded),
					sortedKeys(obj(schema["properties"])))
			}
		}
	}
	var bad map[string]any
	_ = json.Unmarshal([]byte(`{"keys": ["K"], "clinet": "x"}`), &bad)
	if mismatch(t, bad, obj(all["VerifyRequest"]), all, "$") == "" {
		t.Fatal("the checker itself lets an unknown field through")
	}
	if mismatch(t, map[string]any{"key": "K", "order_id": "O", "ttl": 0.5}, obj(all["HoldRequest"]), all, "$") == "" {
		t.Fatal("the checker itself lets a ttl under its minimum through")
	}
}

// -- against the real service ---------------------------------------------------------------------

func TestVerify(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "verify")
	valid := must(kv.Verify(ctx, e.keys[0], ""))
	wantStatus(t, valid, StatusValid)
	if valid.Serial != e.serials[0] || !valid.OK() || valid.Batch == "" || valid.Supplier == "" || valid.Product == "" {
		t.Fatalf("a valid answer: %+v", valid)
	}
	unknown := must(kv.Verify(ctx, e.unkown[0], "acct-go"))
	wantStatus(t, unknown, StatusUnknown)
	bad := must(kv.Verify(ctx, "not-a-key", ""))
	wantStatus(t, bad, StatusMalformed)
	if bad.Serial != "" || bad.OK() {
		t.Fatalf("malformed: %+v", bad)
	}
}

func TestVerifyManyKeepsOrder(t *testing.T) {
	e := served(t)
	kv := e.client(t, "verify")
	got := must(kv.VerifyMany(context.Background(), []string{e.keys[1], "junk", e.unkown[1], e.keys[0]}, ""))
	want := []Status{StatusValid, StatusMalformed, StatusUnknown, StatusValid}
	for i := range want {
		wantStatus(t, got[i], want[i])
	}
	if got[0].Serial != e.serials[1] || got[3].Serial != e.serials[0] {
		t.Fatalf("serials out of order: %+v", got)
	}
	if empty := must(kv.VerifyMany(context.Background(), nil, "")); len(empty) != 0 {
		t.Fatalf("no keys, %d answers", len(empty))
	}
}

func TestRedeemRetrySameOrderAndOtherOrder(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "redeem")
	first := must(kv.Redeem(ctx, e.keys[2], e.run+"-A", "acct-go"))
	wantStatus(t, first, StatusAccepted)
	if first.OrderID != e.run+"-A" || first.Serial != e.serials[2] || first.RedeemedAt == "" {
		t.Fatalf("accepted: %+v", first)
	}
	again := must(kv.Redeem(ctx, e.keys[2], e.run+"-A", ""))
	wantStatus(t, again, StatusAccepted)
	if again.RedeemedAt != first.RedeemedAt {
		t.Fatalf("a retry got another answer: %+v against %+v", again, first)
	}
	other := must(kv.Redeem(ctx, e.keys[2], e.run+"-B", ""))
	wantStatus(t, other, StatusRedeemed)
	if other.OrderID != e.run+"-A" {
		t.Fatalf("redeemed names order %q, want the first", other.OrderID)
	}
	if first.Receipt != "" {
		t.Fatalf("a redeem that asked for no receipt got one")
	}
	signed := must(kv.RedeemWithReceipt(ctx, e.keys[2], e.run+"-A", ""))
	wantStatus(t, signed, StatusAccepted)
	if !strings.HasPrefix(signed.Receipt, "KVR1.") {
		t.Fatalf("RedeemWithReceipt: no receipt in %+v", signed)
	}
	if later := must(kv.Receipt(ctx, e.serials[2])); later != signed.Receipt {
		t.Fatalf("Receipt(serial) %q is not the receipt the redeem carried, %q", later, signed.Receipt)
	}
	file, err := os.ReadFile(e.engine)
	if err != nil {
		t.Fatalf("the harness passes the store's engine.pub: %v", err)
	}
	engine := must(ReadEngineKey(file))
	got := must(VerifyReceipt(signed.Receipt, engine))
	if got.Serial != e.serials[2] || got.Batch != signed.Batch || got.OrderID != e.run+"-A" ||
		got.RedeemedAt != first.RedeemedAt || got.SupplierID != signed.Supplier || got.SupplierName != signed.SupplierName {
		t.Fatalf("VerifyReceipt says %+v of the redeem %+v", got, first)
	}
	var refused *ReceiptError
	body := strings.TrimPrefix(signed.Receipt, "KVR1.")
	swap := map[bool]string{true: "B", false: "A"}[body[20] == 'A']
	flipped := "KVR1." + body[:20] + swap + body[21:]
	for name, damaged := range map[string]string{"altered": flipped, "cut short": signed.Receipt[:60],
		"not a receipt": "KVR2." + body, "padded": signed.Receipt + "="} {
		if _, err := VerifyReceipt(damaged, engine); !errors.As(err, &refused) {
			t.Fatalf("a receipt %s was not refused: %v", name, err)
		}
	}
	stranger, _, _ := ed25519.GenerateKey(nil)
	if _, err := VerifyReceipt(signed.Receipt, stranger); !errors.As(err, &refused) {
		t.Fatalf("a receipt checked against another key was not refused: %v", err)
	}
	if _, err := ReadEngineKey([]byte(`{"kind": "keyvault-public-identity", "version": 1, "public_key": "` +
		base64.StdEncoding.EncodeToString(stranger) + `", "roles": ["supplier"]}`)); !errors.As(err, &refused) {
		t.Fatalf("a supplier's identity was taken for an engine key: %v", err)
	}
	var problem *ProblemError
	if _, err := kv.Receipt(ctx, e.serials[15]); !errors.As(err, &problem) || problem.Name() != "not-found" {
		t.Fatalf("the receipt of a key nobody redeemed: %v, want a not-found problem", err)
	}
}

func TestRedeemMany(t *testing.T) {
	e := served(t)
	got := must(e.client(t, "redeem").RedeemMany(context.Background(), []RedeemItem{
		{e.keys[3], e.run + "-M3"}, {e.keys[4], e.run + "-M4"}, {"junk", e.run + "-M5"}}, "acct-go"))
	for i, want := range []Status{StatusAccepted, StatusAccepted, StatusMalformed} {
		wantStatus(t, got[i], want)
	}
	if got[0].Serial != e.serials[3] || got[1].OrderID != e.run+"-M4" {
		t.Fatalf("answers out of order: %+v", got)
	}
}

func TestVoidBySerial(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "admin")
	voided := must(kv.Void(ctx, e.serials[5], "refunded"))
	wantStatus(t, voided, StatusVoid)
	after := must(kv.Verify(ctx, e.keys[5], ""))
	wantStatus(t, after, StatusVoid)
	if after.Reason != "refunded" {
		t.Fatalf("void reason %q", after.Reason)
	}
}

func TestBlacklistAndLift(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "admin")
	entry := must(kv.Blacklist(ctx, LevelSerial, e.serials[6], "reported stolen"))
	if entry.Target != e.serials[6] || entry.Reason != "reported stolen" || entry.Level != string(LevelSerial) {
		t.Fatalf("entry %+v", entry)
	}
	refused := must(kv.Verify(ctx, e.keys[6], ""))
	wantStatus(t, refused, StatusBlacklisted)
	// The entry is answered at the level asked; a serial names one key, so the key's answer says "key".
	if refused.Level != string(LevelKey) || refused.Reason != "reported stolen" {
		t.Fatalf("blacklisted %+v", refused)
	}
	must(kv.Lift(ctx, LevelSerial, e.serials[6], "found"))
	wantStatus(t, must(kv.Verify(ctx, e.keys[6], "")), StatusValid)
	_, err := kv.Lift(ctx, LevelSerial, e.serials[6], "again")
	wantProblem(t, err, "not-found", 404)
}

func TestTraceAndStats(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	story := must(e.client(t, "redeem").Trace(ctx, e.serials[2], false))
	raw, _ := json.Marshal(story)
	if !strings.Contains(string(raw), e.serials[2]) {
		t.Fatalf("the trace does not name its serial: %s", raw)
	}
	if len(must(e.client(t, "admin").Stats(ctx))) == 0 {
		t.Fatal("empty stats")
	}
	_, err := e.client(t, "redeem").Trace(ctx, "NOPE-000-99999", false)
	wantProblem(t, err, "not-found", 404)
}

func TestUnauthorizedIs401Problem(t *testing.T) {
	e := served(t)
	c, _ := New(e.url, "kvt_"+strings.Repeat("A", 43))
	_, err := c.Verify(context.Background(), e.keys[0], "")
	wantProblem(t, err, "unauthorized", 401)
}

func TestForbiddenIs403Problem(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	_, err := e.client(t, "verify").Redeem(ctx, e.keys[7], e.run+"-F", "")
	if p := wantProblem(t, err, "forbidden", 403); !strings.Contains(p.Detail, "redeem") {
		t.Fatalf("the detail does not name the scope: %q", p.Detail)
	}
	_, err = e.client(t, "redeem").Void(ctx, e.serials[7], "no")
	wantProblem(t, err, "forbidden", 403)
	_, err = e.client(t, "redeem").Stats(ctx)
	wantProblem(t, err, "forbidden", 403)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[7], "")), StatusValid)
}

func TestBadInputIs422AndChangesNothing(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	started := time.Now()
	_, err := e.client(t, "redeem", WithRedeemRetries(3, 2*time.Second, 5*time.Second)).Redeem(ctx, e.keys[8], "  ", "")
	wantProblem(t, err, "invalid-request", 422)
	if time.Since(started) > 1500*time.Millisecond {
		t.Fatal("a 422 was retried")
	}
	_, err = e.client(t, "redeem").Redeem(ctx, e.keys[8], "SO-1", strings.Repeat("c", 64))
	wantProblem(t, err, "invalid-request", 422)
	_, err = e.client(t, "admin").Blacklist(ctx, Level("galaxy"), e.serials[8], "x")
	wantProblem(t, err, "invalid-request", 422)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[8], "")), StatusValid)
}

// -- checkout: holds, confirms, releases, orders --------------------------------------------------

func statuses(rs []Result) []Status {
	out := make([]Status, len(rs))
	for i, r := range rs {
		out[i] = r.Status
	}
	return out
}

func wantStatuses(t *testing.T, rs []Result, want ...Status) {
	t.Helper()
	if !reflect.DeepEqual(statuses(rs), want) {
		t.Fatalf("statuses %v, want %v (%+v)", statuses(rs), want, rs)
	}
}

func TestHoldRefuseConfirmRetryAndOrder(t *testing.T) {
	e := served(t)
	ctx := ContextWithRequestID(context.Background(), e.run+"-checkout")
	kv := e.client(t, "redeem")
	order := e.run + "-hold/1 x" // a '/' and a space: the lookup escapes the id
	held := must(kv.Hold(ctx, e.keys[9], order, 15*time.Minute, ""))
	wantStatus(t, held, StatusHeld)
	if held.Serial != e.serials[9] || held.OrderID != order || held.RequestID != e.run+"-checkout" {
		t.Fatalf("held: %+v", held)
	}
	ends, err := time.Parse(time.RFC3339Nano, held.ExpiresAt)
	if left := time.Until(ends); err != nil || left < 14*time.Minute || left > 15*time.Minute {
		t.Fatalf("the hold ends at %q (%v), want in 15 minutes", held.ExpiresAt, err)
	}
	again := must(kv.Hold(ctx, e.keys[9], order, time.Minute, ""))
	wantStatus(t, again, StatusHeld)
	if again.ExpiresAt != held.ExpiresAt {
		t.Fatalf("a retry moved the expiry: %q, first %q", again.ExpiresAt, held.ExpiresAt)
	}
	other := must(kv.Hold(ctx, e.keys[9], e.run+"-hold-2", 15*time.Minute, ""))
	wantStatus(t, other, StatusHeld)
	if other.OrderID != "" || other.ExpiresAt != held.ExpiresAt {
		t.Fatalf("another order must be told held, naming no order: %+v", other)
	}
	wantStatus(t, must(kv.Redeem(ctx, e.keys[9], e.run+"-hold-2", "")), StatusHeld)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[9], "")), StatusHeld)
	confirmed := must(kv.Confirm(ctx, order))
	wantStatuses(t, confirmed, StatusAccepted)
	if c := confirmed[0]; c.Serial != e.serials[9] || c.OrderID != order || c.RedeemedAt == "" || c.RequestID != e.run+"-checkout" {
		t.Fatalf("confirmed: %+v", c)
	}
	retried := must(kv.Confirm(ctx, order))
	wantStatuses(t, retried, StatusAccepted)
	if retried[0].RedeemedAt != confirmed[0].RedeemedAt {
		t.Fatalf("a retried confirm answered otherwise: %+v, first %+v", retried[0], confirmed[0])
	}
	late := must(kv.Redeem(ctx, e.keys[9], e.run+"-hold-2", ""))
	if late.Status != StatusRedeemed || late.OrderID != order {
		t.Fatalf("after the confirm, another order: %+v", late)
	}
	lookup := must(kv.Order(ctx, order))
	if lookup.OrderID != order || lookup.RequestID != e.run+"-checkout" || len(lookup.Keys) != 1 {
		t.Fatalf("order: %+v", lookup)
	}
	entry, ok := lookup.Key(e.serials[9])
	if !ok || entry.State != OrderRedeemed || entry.ExpiresAt != held.ExpiresAt || entry.RedeemedAt != confirmed[0].RedeemedAt ||
		entry.HeldAt == "" || entry.HeldAt > entry.RedeemedAt || entry.ReleasedAt != "" || entry.ExpiredAt != "" {
		t.Fatalf("the order's key: %+v", entry)
	}
	var types []string
	for _, ev := range lookup.Events {
		types = append(types, ev.Type)
		if ev.Serial != e.serials[9] || ev.OrderID != order || ev.At == "" {
			t.Fatalf("an event: %+v", ev)
		}
	}
	// a confirm redeems: its redeem is listed too
	if !reflect.DeepEqual(types, []string{"hold", "confirm", "redeem"}) || lookup.Events[0].ExpiresAt != held.ExpiresAt {
		t.Fatalf("events %+v", lookup.Events)
	}
	if _, ok := lookup.Key(e.serials[10]); ok {
		t.Fatal("a key the order never held is listed")
	}
	if raw, _ := json.Marshal(lookup); strings.Contains(string(raw), e.keys[9]) {
		t.Fatal("the lookup holds the key")
	}

	// a plain redeem (no hold) is listed too: one redeem event
	plain := e.run + "-plain"
	wantStatus(t, must(kv.Redeem(ctx, e.keys[13], plain, "")), StatusAccepted)
	redeemed := must(kv.Order(ctx, plain))
	if len(redeemed.Events) != 1 || redeemed.Events[0].Type != "redeem" || redeemed.Events[0].Serial != e.serials[13] ||
		redeemed.Events[0].OrderID != plain || redeemed.Events[0].At == "" {
		t.Fatalf("a plain redeem's order: %+v", redeemed)
	}
}

func TestReleaseFreesAHeldKey(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "redeem")
	order := e.run + "-rel"
	wantStatus(t, must(kv.Hold(ctx, e.keys[10], order, 10*time.Minute, "")), StatusHeld)
	released := must(kv.Release(ctx, order))
	wantStatuses(t, released, StatusReleased)
	if released[0].Serial != e.serials[10] || released[0].OrderID != order {
		t.Fatalf("released: %+v", released[0])
	}
	wantStatuses(t, must(kv.Release(ctx, order)), StatusReleased)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[10], "")), StatusValid)
	wantStatuses(t, must(kv.Confirm(ctx, order)), StatusReleased)
	next := must(kv.Hold(ctx, e.keys[10], order+"-2", 10*time.Minute, ""))
	if next.Status != StatusHeld || next.OrderID != order+"-2" {
		t.Fatalf("another order could not hold the released key: %+v", next)
	}
	entry, ok := must(kv.Order(ctx, order)).Key(e.serials[10])
	if !ok || entry.State != OrderReleased || entry.ReleasedAt == "" || entry.RedeemedAt != "" {
		t.Fatalf("the released key: %+v", entry)
	}
	wantStatuses(t, must(kv.Release(ctx, order+"-2")), StatusReleased)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[10], "")), StatusValid)
}

func TestCheckoutRefusals(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "redeem")
	_, err := kv.Confirm(ctx, e.run+"-never")
	wantProblem(t, err, "not-found", 404)
	_, err = kv.Release(ctx, e.run+"-never")
	wantProblem(t, err, "not-found", 404)
	_, err = kv.Order(ctx, e.run+"-never")
	wantProblem(t, err, "not-found", 404)
	for _, ttl := range []time.Duration{0, 500 * time.Millisecond, 7*24*time.Hour + time.Second, -time.Minute} {
		_, err = kv.Hold(ctx, e.keys[11], e.run+"-ttl", ttl, "")
		wantProblem(t, err, "invalid-request", 422)
	}
	_, err = kv.Hold(ctx, e.keys[11], "  ", time.Minute, "")
	wantProblem(t, err, "invalid-request", 422)
	_, err = kv.Order(ctx, strings.Repeat("o", 129))
	wantProblem(t, err, "invalid-request", 422)
	_, err = e.client(t, "verify").Hold(ctx, e.keys[11], e.run+"-ttl", time.Minute, "")
	wantProblem(t, err, "forbidden", 403)
	_, err = e.client(t, "verify").Order(ctx, e.run+"-ttl")
	wantProblem(t, err, "forbidden", 403)
	wantStatus(t, must(e.client(t, "verify").Verify(ctx, e.keys[11], "")), StatusValid)
	wantStatus(t, must(kv.Hold(ctx, "not-a-key", e.run+"-ttl", time.Minute, "")), StatusMalformed)
}

func TestCountLimitedKey(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "redeem")
	if e.limited == "" || e.limitedUses != "3" {
		t.Fatalf("the harness passes one 3-use key, got %q uses", e.limitedUses)
	}
	first := must(kv.Redeem(ctx, e.limited, e.run+"-L1", ""))
	if first.Status != StatusAccepted || first.Serial != e.limitedSerial || uses(first.UsesLeft) != 2 {
		t.Fatalf("the first use: %+v", first)
	}
	if again := must(kv.Redeem(ctx, e.limited, e.run+"-L1", "")); again.Status != StatusAccepted || uses(again.UsesLeft) != 2 {
		t.Fatalf("a retry answered otherwise: %+v", again)
	}
	wantStatus(t, must(kv.Hold(ctx, e.limited, e.run+"-L2", 10*time.Minute, "")), StatusHeld)
	if second := must(kv.Redeem(ctx, e.limited, e.run+"-L3", "")); second.Status != StatusAccepted || uses(second.UsesLeft) != 1 {
		t.Fatalf("the second use: %+v", second)
	}
	wantStatus(t, must(kv.Redeem(ctx, e.limited, e.run+"-L4", "")), StatusHeld) // the last use is held
	confirmed := must(kv.Confirm(ctx, e.run+"-L2"))
	if wantStatuses(t, confirmed, StatusAccepted); uses(confirmed[0].UsesLeft) != 0 {
		t.Fatalf("the held use confirmed: %+v", confirmed[0])
	}
	for _, refused := range []Result{must(kv.Redeem(ctx, e.limited, e.run+"-L4", "")),
		must(e.client(t, "verify").Verify(ctx, e.limited, ""))} {
		if refused.Status != StatusExhausted || uses(refused.UsesLeft) != 0 {
			t.Fatalf("an exhausted key answered otherwise, or without its uses left (0): %+v", refused)
		}
	}
	if single := must(e.client(t, "verify").Verify(ctx, e.keys[13], "")); single.UsesLeft != nil {
		t.Fatalf("a single-use key answered uses left: %+v", single)
	}
	lookup := must(kv.Order(ctx, e.run+"-L3"))
	entry, ok := lookup.Key(e.limitedSerial)
	if !ok || entry.State != OrderRedeemed || uses(entry.UsesLeft) != 1 || entry.HeldAt != "" || len(lookup.Events) != 1 ||
		lookup.Events[0].Type != "use" || uses(lookup.Events[0].UsesLeft) != 1 {
		t.Fatalf("the order of a use: %+v", lookup)
	}
}

// uses is a count-limited answer's uses left, -1 when the answer carries none.
func uses(left *int) int {
	if left == nil {
		return -1
	}
	return *left
}

func TestOrderMapsEveryAnsweredField(t *testing.T) {
	e := served(t)
	ctx := context.Background()
	kv := e.client(t, "redeem")
	order := e.run + "-shape"
	must(kv.Hold(ctx, e.keys[12], order, 5*time.Minute, ""))
	must(kv.Release(ctx, order))
	must(kv.Hold(ctx, e.keys[12], order, 5*time.Minute, ""))
	defer kv.Release(ctx, order)
	var raw map[string]any
	if _, err := kv.send(ctx, "GET", strings.Replace(routes["order"].path, "{order_id}", order, 1), nil, &raw); err != nil {
		t.Fatal(err)
	}
	fieldNames := func(v any) []string {
		var out []string
		for f := range jsonFields(v) {
			out = append(out, f)
		}
		sort.Strings(out)
		return out
	}
	if got, want := sortedKeys(raw), fieldNames(Order{}); !reflect.DeepEqual(got, want) {
		t.Fatalf("the order answers %v, Order maps %v", got, want)
	}
	keyFields, eventFields := jsonFields(OrderKey{}), jsonFields(OrderEvent{})
	for _, k := range asList(raw["keys"]) {
		for f := range obj(k) {
			if _, ok := keyFields[f]; !ok {
				t.Fatalf("the answer's key field %q is not mapped by OrderKey", f)
			}
		}
		for f := range keyFields {
			if _, ok := obj(k)[f]; !ok && f != "uses_left" && f != "voided_at" {
				t.Fatalf("OrderKey maps %q, which the service does not answer", f)
			}
		}
		state := OrderState(obj(k)["state"].(string))
		if !reflect.DeepEqual(state, OrderHeld) {
			t.Fatalf("held again after a release, answered %q", state)
		}
	}
	var types []string
	for _, ev := range asList(raw["events"]) {
		types = append(types, obj(ev)["type"].(string))
		for f := range obj(ev) {
			if _, ok := eventFields[f]; !ok {
				t.Fatalf("the answer's event field %q is not mapped by OrderEvent", f)
			}
		}
	}
	if !reflect.DeepEqual(types, []string{"hold", "release", "hold"}) {
		t.Fatalf("events %v", types)
	}
}

// -- transport and retries, against stand-ins -----------------------------------------------------

// stand-in answers each request with the next step of plan (the last repeats) and records the bodies.
type standIn struct {
	mu     sync.Mutex
	plan   []int
	bodies []string
	server *httptest.Server
	// onRequest, when set, sees each request first (it runs under the stand-in's lock)
	onRequest func(*http.Request)
}

func newStandIn(t *testing.T, plan ...int) *standIn {
	s := &standIn{plan: plan}
	s.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		raw, _ := json.Marshal(body)
		s.mu.Lock()
		if s.onRequest != nil {
			s.onRequest(r)
		}
		n := len(s.bodies)
		s.bodies = append(s.bodies, r.Method+" "+r.URL.Path+" "+string(raw))
		s.mu.Unlock()
		code := s.plan[len(s.plan)-1]
		if n < len(s.plan) {
			code = s.plan[n]
		}
		switch code {
		case 200:
			w.Header().Set("Content-Type", "application/json")
			result := fmt.Sprintf(`{"status":"accepted","serial":"S-1","batch":"B","supplier":"X","order_id":%q}`, body["order_id"])
			if r.URL.Path == "/v1/confirm" || r.URL.Path == "/v1/release" { // these answer a list
				result = `{"results":[` + result + `]}`
			}
			fmt.Fprint(w, result)
		case 502:
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(502)
			fmt.Fprint(w, "<html>bad gateway</html>")
		case 0: // hang past the client's timeout
			time.Sleep(2 * time.Second)
		default:
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"type":"urn:keyvault:problem:store-unavailable","title":"t","status":%d,"detail":"d"}`, code)
		}
	}))
	t.Cleanup(s.server.Close)
	return s
}

func (s *standIn) client(t *testing.T, opts ...Option) *Client {
	c, err := New(s.server.URL, "kvt_t", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (s *standIn) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

func TestRedeem503IsRetriedWithTheSameOrderID(t *testing.T) {
	s := newStandIn(t, 503, 503, 200)
	r := must(s.client(t, WithRedeemRetries(4, time.Millisecond, 10*time.Millisecond)).Redeem(context.Background(), "K-1", "SO-77", ""))
	wantStatus(t, r, StatusAccepted)
	got := s.requests()
	if len(got) != 3 {
		t.Fatalf("%d tries, want 3", len(got))
	}
	for _, line := range got {
		if !strings.HasPrefix(line, "POST /v1/redeem ") || !strings.Contains(line, `"order_id":"SO-77"`) {
			t.Fatalf("a retry changed the request: %s", line)
		}
	}
}

func TestRetriesAreBounded(t *testing.T) {
	s := newStandIn(t, 503)
	_, err := s.client(t, WithRedeemRetries(2, time.Millisecond, time.Millisecond)).
		RedeemMany(context.Background(), []RedeemItem{{"K", "SO-1"}}, "")
	wantProblem(t, err, "store-unavailable", 503)
	if n := len(s.requests()); n != 3 {
		t.Fatalf("%d tries, want 1 + 2 retries", n)
	}
	s2 := newStandIn(t, 503)
	_, err = s2.client(t, WithRedeemRetries(0, 0, 0)).Redeem(context.Background(), "K", "SO-1", "")
	wantProblem(t, err, "store-unavailable", 503)
	if n := len(s2.requests()); n != 1 {
		t.Fatalf("%d tries with retries off", n)
	}
}

func TestCheckout503IsRetriedWithTheSameOrderID(t *testing.T) {
	opts := WithRedeemRetries(4, time.Millisecond, 10*time.Millisecond)
	s := newStandIn(t, 503, 200)
	ctx := ContextWithRequestID(context.Background(), "retry-hold")
	var ids []string
	s.onRequest = func(r *http.Request) { ids = append(ids, r.Header.Get("X-Request-Id")) }
	wantStatus(t, must(s.client(t, opts).Hold(ctx, "K-1", "SO-H", 15*time.Minute, "")), StatusAccepted)
	got := s.requests()
	if len(got) != 2 || !reflect.DeepEqual(ids, []string{"retry-hold", "retry-hold"}) {
		t.Fatalf("%d tries with ids %v, want 2 with the same id", len(got), ids)
	}
	for _, line := range got {
		if line != `POST /v1/hold {"key":"K-1","order_id":"SO-H","ttl":900}` {
			t.Fatalf("a retry changed the request: %s", line)
		}
	}
	for _, op := range []string{"confirm", "release"} {
		s := newStandIn(t, 503, 503, 200)
		c := s.client(t, opts)
		call := map[string]func(context.Context, string) ([]Result, error){"confirm": c.Confirm, "release": c.Release}[op]
		rs := must(call(context.Background(), "SO-C"))
		if len(rs) != 1 || rs[0].OrderID != "SO-C" {
			t.Fatalf("%s: %+v", op, rs)
		}
		got := s.requests()
		if len(got) != 3 {
			t.Fatalf("%s: %d tries, want 3", op, len(got))
		}
		for _, line := range got {
			if line != "POST /v1/"+op+` {"order_id":"SO-C"}` {
				t.Fatalf("%s: a retry changed the request: %s", op, line)
			}
		}
	}
	s3 := newStandIn(t, 503)
	_, err := s3.client(t, opts).Order(context.Background(), "SO-C")
	wantProblem(t, err, "store-unavailable", 503)
	if n := len(s3.requests()); n != 1 {
		t.Fatalf("an order lookup was tried %d times; it is not retried", n)
	}
}

func TestVerify503IsNotRetried(t *testing.T) {
	s := newStandIn(t, 503)
	_, err := s.client(t, WithRedeemRetries(4, time.Millisecond, time.Millisecond)).Verify(context.Background(), "K", "")
	wantProblem(t, err, "store-unavailable", 503)
	if n := len(s.requests()); n != 1 {
		t.Fatalf("%d tries of a verify", n)
	}
}

func TestProxyErrorIsTransportErrorAndRedeemRetriesThroughIt(t *testing.T) {
	s := newStandIn(t, 502)
	_, err := s.client(t).Verify(context.Background(), "K", "")
	var te *TransportError
	if !errors.As(err, &te) || te.StatusCode != 502 {
		t.Fatalf("want a TransportError 502, got %T %v", err, err)
	}
	s2 := newStandIn(t, 502, 200)
	wantStatus(t, must(s2.client(t, WithRedeemRetries(2, time.Millisecond, time.Millisecond)).
		Redeem(context.Background(), "K", "SO-9", "")), StatusAccepted)
}

func TestTimeoutAndContextDeadline(t *testing.T) {
	s := newStandIn(t, 0)
	started := time.Now()
	_, err := s.client(t, WithTimeout(300*time.Millisecond)).Verify(context.Background(), "K", "")
	var te *TransportError
	if !errors.As(err, &te) || time.Since(started) > 1500*time.Millisecond {
		t.Fatalf("want a TransportError within the timeout, got %T %v after %v", err, err, time.Since(started))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	started = time.Now()
	_, err = s.client(t).Redeem(ctx, "K", "SO-1", "")
	if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) || time.Since(started) > 1500*time.Millisecond {
		t.Fatalf("want the context's deadline, got %T %v after %v", err, err, time.Since(started))
	}
}

func TestNothingListeningNamesNoSecret(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	c, _ := New("http://"+addr, "kvt_secret_token_value", WithRedeemRetries(1, time.Millisecond, time.Millisecond))
	_, err := c.Redeem(context.Background(), "SECRET-KEY-VALUE", "SO-1", "")
	var te *TransportError
	if !errors.As(err, &te) {
		t.Fatalf("want a TransportError, got %T %v", err, err)
	}
	if strings.Contains(err.Error(), "SECRET-KEY-VALUE") || strings.Contains(err.Error(), "kvt_secret") {
		t.Fatalf("a secret in the error: %v", err)
	}
}

func TestNewRefusesBadArguments(t *testing.T) {
	for _, bad := range [][2]string{{"localhost:8080", "kvt_x"}, {"http://h", ""}, {"http://h", "kvt_x\r\nX: 1"}, {"ftp://h", "t"}} {
		if _, err := New(bad[0], bad[1]); err == nil {
			t.Fatalf("New(%q, %q) was accepted", bad[0], bad[1])
		}
	}
	if _, err := New("http://h", "t", WithRedeemRetries(-1, 0, 0)); err == nil {
		t.Fatal("negative retries were accepted")
	}
}
