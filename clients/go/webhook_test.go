package keyvault

// Webhook signatures: the Standard Webhooks specification's own vector, vectors that keyvault's Python signer
// made (tests/test_clients.py passes their file in KEYVAULT_TEST_WEBHOOKS), and request ids end to end.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

const (
	specSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTimestamp = "1614265330"
	specBody      = `{"test": 2432232314}`
	specSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func specHeader() http.Header {
	h := http.Header{}
	h.Set("webhook-id", specID)
	h.Set("webhook-timestamp", specTimestamp)
	h.Set("webhook-signature", specSignature)
	return h
}

var specTime = time.Unix(1614265330, 0)

func TestWebhookSpecVector(t *testing.T) {
	id, err := verifyWebhookAt(specSecret, specHeader(), []byte(specBody), 0, specTime.Add(299*time.Second))
	if err != nil || id != specID {
		t.Fatalf("the spec's vector: %q, %v", id, err)
	}
	if _, err := VerifyWebhook(specSecret, specHeader(), []byte(specBody), 0); err == nil {
		t.Fatal("a 2021 timestamp verified against the real clock")
	}
	if _, err := verifyWebhookAt(strings.TrimPrefix(specSecret, "whsec_"), specHeader(), []byte(specBody), 0, specTime); err != nil {
		t.Fatalf("the secret without its prefix: %v", err)
	}
}

func TestWebhookRefusals(t *testing.T) {
	body := []byte(specBody)
	for name, c := range map[string]struct {
		change func(h http.Header) []byte
		want   string
	}{
		"body changed":       {func(h http.Header) []byte { return append([]byte{}, specBody+" "...) }, "no signature matches"},
		"id changed":         {func(h http.Header) []byte { h.Set("webhook-id", "msg_other"); return body }, "no signature matches"},
		"timestamp changed":  {func(h http.Header) []byte { h.Set("webhook-timestamp", "1614265331"); return body }, "no signature matches"},
		"timestamp float":    {func(h http.Header) []byte { h.Set("webhook-timestamp", "1614265330.0"); return body }, "not Unix seconds"},
		"timestamp signed":   {func(h http.Header) []byte { h.Set("webhook-timestamp", "+1614265330"); return body }, "not Unix seconds"},
		"no id":              {func(h http.Header) []byte { h.Del("webhook-id"); return body }, "no webhook-id header"},
		"no signature":       {func(h http.Header) []byte { h.Del("webhook-signature"); return body }, "no webhook-signature header"},
		"two ids":            {func(h http.Header) []byte { h.Add("webhook-id", specID); return body }, "more than one webhook-id"},
		"other version only": {func(h http.Header) []byte { h.Set("webhook-signature", "v2"+specSignature[2:]); return body }, "no signature matches"},
		"not base64":         {func(h http.Header) []byte { h.Set("webhook-signature", "v1,not*base64"); return body }, "no signature matches"},
		"too many": {func(h http.Header) []byte {
			h.Set("webhook-signature", strings.Repeat(specSignature+" ", 33))
			return body
		}, "more than 32"},
	} {
		h := specHeader()
		got := c.change(h)
		_, err := verifyWebhookAt(specSecret, h, got, 0, specTime)
		var we *WebhookError
		if !errors.As(err, &we) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: want a WebhookError %q, got %v", name, c.want, err)
		}
		if strings.Contains(err.Error(), "MfKQ9r8") || strings.Contains(err.Error(), "2432232314") {
			t.Fatalf("%s: the error holds the secret or the body: %v", name, err)
		}
	}
	for _, offset := range []int{-301, 301} {
		_, err := verifyWebhookAt(specSecret, specHeader(), body, 0, specTime.Add(time.Duration(offset)*time.Second))
		if err == nil {
			t.Fatalf("a timestamp %d s away verified", offset)
		}
	}
	if _, err := verifyWebhookAt(specSecret, specHeader(), body, time.Hour, specTime.Add(59*time.Minute)); err != nil {
		t.Fatalf("an hour's tolerance: %v", err)
	}
	for _, bad := range []string{"", "whsec_", "whsec_not*base64"} {
		if _, err := verifyWebhookAt(bad, specHeader(), body, 0, specTime); err == nil || !strings.Contains(err.Error(), "secret") {
			t.Fatalf("secret %q: %v", bad, err)
		}
	}
	// every flipped bit of the signature is refused
	mac := hmac.New(sha256.New, must(base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")))
	mac.Write([]byte(specID + "." + specTimestamp + "." + specBody))
	sum := mac.Sum(nil)
	for i := 0; i < len(sum)*8; i++ {
		flipped := append([]byte{}, sum...)
		flipped[i/8] ^= 1 << (i % 8)
		h := specHeader()
		h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(flipped))
		if _, err := verifyWebhookAt(specSecret, h, body, 0, specTime); err == nil {
			t.Fatalf("bit %d flipped verified", i)
		}
	}
}

// vector is one webhook that keyvault.formats.webhooks signed (or damaged), with what verify must say.
type vector struct {
	Name      string            `json:"name"`
	Secret    string            `json:"secret"`
	Headers   map[string]string `json:"headers"`
	Body      string            `json:"body_base64"`
	Now       int64             `json:"now"`
	Tolerance int64             `json:"tolerance"`
	Valid     bool              `json:"valid"`
}

func TestWebhookVectorsFromKeyvaultsSigner(t *testing.T) {
	path := os.Getenv("KEYVAULT_TEST_WEBHOOKS")
	if path == "" {
		t.Skip("KEYVAULT_TEST_WEBHOOKS is not set: run with `make test-clients` (it writes the vectors)")
	}
	var vectors []vector
	if err := json.Unmarshal(must(os.ReadFile(path)), &vectors); err != nil || len(vectors) < 8 {
		t.Fatalf("the vectors file: %v (%d vectors)", err, len(vectors))
	}
	for _, v := range vectors {
		h := http.Header{}
		for k, value := range v.Headers {
			h.Add(k, value)
		}
		id, err := verifyWebhookAt(v.Secret, h, must(base64.StdEncoding.DecodeString(v.Body)),
			time.Duration(v.Tolerance)*time.Second, time.Unix(v.Now, 0))
		if v.Valid && (err != nil || id != v.Headers["webhook-id"]) {
			t.Fatalf("%s: keyvault signed it, the Go verifier refused it: %v", v.Name, err)
		}
		if !v.Valid && err == nil {
			t.Fatalf("%s: keyvault refuses it, the Go verifier accepted it", v.Name)
		}
	}
}

// -- request ids ----------------------------------------------------------------------------------------

func TestRequestIDIsSentAndSurfaced(t *testing.T) {
	e := served(t)
	ctx := ContextWithRequestID(context.Background(), e.run+"-verify")
	r := must(e.client(t, "verify").Verify(ctx, e.keys[len(e.keys)-1], ""))
	if r.RequestID != e.run+"-verify" {
		t.Fatalf("the result's request id %q, want the one sent", r.RequestID)
	}
	r = must(e.client(t, "verify").Verify(context.Background(), e.keys[len(e.keys)-1], ""))
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(r.RequestID) {
		t.Fatalf("without one, the service's own id: got %q", r.RequestID)
	}
	bad, _ := New(e.url, "kvt_"+strings.Repeat("A", 43))
	_, err := bad.Verify(ContextWithRequestID(context.Background(), e.run+"-401"), e.keys[0], "")
	p := wantProblem(t, err, "unauthorized", 401)
	if p.RequestID != e.run+"-401" || !strings.Contains(p.Error(), "request "+e.run+"-401") {
		t.Fatalf("the problem's request id %q (%v)", p.RequestID, p)
	}
	many := must(e.client(t, "verify").VerifyMany(ContextWithRequestID(context.Background(), "many-1"), e.keys[:2], ""))
	if many[0].RequestID != "many-1" || many[1].RequestID != "many-1" {
		t.Fatalf("verify-many's request ids: %+v", many)
	}
}

func TestProblemMapsTheServedSchema(t *testing.T) {
	e := served(t)
	props := obj(schemas(t, e)["Problem"])["properties"]
	var mapped []string
	for f := range jsonFields(ProblemError{}) {
		mapped = append(mapped, f)
	}
	sort.Strings(mapped)
	if served := sortedKeys(obj(props)); strings.Join(mapped, ",") != strings.Join(served, ",") {
		t.Fatalf("ProblemError maps %v, the served Problem has %v", mapped, served)
	}
}

func TestRetriesSendTheSameRequestID(t *testing.T) {
	var seen []string
	s := newStandIn(t, 503, 503, 200)
	s.onRequest = func(r *http.Request) { seen = append(seen, r.Header.Get("X-Request-Id")) }
	ctx := ContextWithRequestID(context.Background(), "retry-me")
	must(s.client(t, WithRedeemRetries(4, time.Millisecond, time.Millisecond)).Redeem(ctx, "K-1", "SO-1", ""))
	if strings.Join(seen, ",") != "retry-me,retry-me,retry-me" {
		t.Fatalf("the tries sent request ids %v", seen)
	}
}
