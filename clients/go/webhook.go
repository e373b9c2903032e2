package keyvault

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// WebhookTolerance is how far a webhook's timestamp may be from now, either way, by default (the spec's 5 minutes).
const WebhookTolerance = 5 * time.Minute

// maxWebhookSignatures bounds the signatures of one header (a rotation has two or three; more is an attack).
const maxWebhookSignatures = 32

// WebhookError says why a webhook was refused. It never holds the secret or the body.
type WebhookError struct{ Reason string }

// Error describes the refusal and what to check.
func (e *WebhookError) Error() string { return "keyvault: webhook refused: " + e.Reason }

// VerifyWebhook checks a webhook signed the Standard Webhooks way (webhook-id, webhook-timestamp and
// webhook-signature headers; https://www.standardwebhooks.com) against body, the bytes received before any
// JSON decoding. secret is the endpoint's "whsec_..." secret; tolerance bounds the timestamp's distance from
// now (0: WebhookTolerance). It returns the message id, the same on every retry of one message: use it to
// ignore duplicates. Any refusal is a *WebhookError.
func VerifyWebhook(secret string, header http.Header, body []byte, tolerance time.Duration) (string, error) {
	return verifyWebhookAt(secret, header, body, tolerance, time.Now())
}

func verifyWebhookAt(secret string, header http.Header, body []byte, tolerance time.Duration, now time.Time) (string, error) {
	key, err := webhookKey(secret)
	if err != nil {
		return "", err
	}
	if tolerance <= 0 {
		tolerance = WebhookTolerance
	}
	id, err := oneHeader(header, "Webhook-Id")
	if err != nil {
		return "", err
	}
	stamp, err := oneHeader(header, "Webhook-Timestamp")
	if err != nil {
		return "", err
	}
	sent, err := oneHeader(header, "Webhook-Signature")
	if err != nil {
		return "", err
	}
	seconds, err := strconv.ParseInt(stamp, 10, 64)
	if err != nil || seconds < 0 || len(stamp) > 12 || strings.TrimLeft(stamp, "0123456789") != "" {
		return "", &WebhookError{"the webhook-timestamp header is not Unix seconds: the sender is not Standard Webhooks"}
	}
	at := time.Unix(seconds, 0)
	if at.Before(now.Add(-tolerance)) {
		return "", &WebhookError{fmt.Sprintf("the timestamp is more than %v old: a replay, or this machine's clock is wrong (check NTP)", tolerance)}
	}
	if at.After(now.Add(tolerance)) {
		return "", &WebhookError{fmt.Sprintf("the timestamp is more than %v in the future: this machine's clock or the sender's is wrong (check NTP)", tolerance)}
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + stamp + "."))
	mac.Write(body)
	expected := mac.Sum(nil)
	candidates := strings.Fields(sent)
	if len(candidates) > maxWebhookSignatures {
		return "", &WebhookError{fmt.Sprintf("the webhook-signature header holds more than %d signatures", maxWebhookSignatures)}
	}
	matched := false
	for _, candidate := range candidates {
		version, value, ok := strings.Cut(candidate, ",")
		if !ok || version != "v1" {
			continue // other schemes (v1a: asymmetric) are not this function's to check
		}
		given, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			continue
		}
		if hmac.Equal(expected, given) { // constant time; every candidate is compared
			matched = true
		}
	}
	if !matched {
		return "", &WebhookError{"no signature matches: check that the secret is this endpoint's, and that the body is the bytes received, unparsed"}
	}
	return id, nil
}

// webhookKey decodes a "whsec_<base64>" secret (the prefix may be left out) to its HMAC key.
func webhookKey(secret string) ([]byte, error) {
	text := strings.TrimPrefix(secret, "whsec_")
	key, err := base64.StdEncoding.DecodeString(text + strings.Repeat("=", (4-len(text)%4)%4))
	if err != nil {
		return nil, &WebhookError{"the secret is not 'whsec_' followed by base64: copy it again from where it was made"}
	}
	if len(key) == 0 {
		return nil, &WebhookError{"the secret is empty: set the secret the sender signs with"}
	}
	return key, nil
}

// oneHeader is the one non-empty value of a header (names in any case), or why not.
func oneHeader(header http.Header, name string) (string, error) {
	var values []string
	for k, v := range header {
		if strings.EqualFold(k, name) {
			values = append(values, v...)
		}
	}
	lower := strings.ToLower(name)
	if len(values) > 1 {
		return "", &WebhookError{"more than one " + lower + " header: a proxy or a client changed the request"}
	}
	if len(values) == 0 || strings.TrimSpace(values[0]) == "" {
		return "", &WebhookError{"no " + lower + " header: the webhook was not signed by a Standard Webhooks sender"}
	}
	return strings.TrimSpace(values[0]), nil
}
