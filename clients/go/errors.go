package keyvault

import (
	"fmt"
	"strings"
	"time"
)

// ProblemPrefix starts every problem type the service answers.
const ProblemPrefix = "urn:keyvault:problem:"

// ProblemError is an RFC 9457 problem document from the service: match on Type (stable), read Detail.
type ProblemError struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// RequestID is the service's id of the request (its X-Request-Id): quote it to the service's operator.
	RequestID string `json:"request_id"`
	// RetryAfter is the answer's Retry-After header, when it had one (a 503 may).
	RetryAfter time.Duration `json:"-"`
}

// Error describes the problem (it never holds a key or a token: the service's detail never does).
func (e *ProblemError) Error() string {
	if e.RequestID != "" {
		return fmt.Sprintf("keyvault: %d %s: %s (%s, request %s)", e.Status, e.Title, e.Detail, e.Type, e.RequestID)
	}
	return fmt.Sprintf("keyvault: %d %s: %s (%s)", e.Status, e.Title, e.Detail, e.Type)
}

// Name is the problem's short name: "unauthorized" for urn:keyvault:problem:unauthorized.
func (e *ProblemError) Name() string { return strings.TrimPrefix(e.Type, ProblemPrefix) }

// TransportError: the service could not be reached, did not answer in time, or answered outside its API.
// A redeem that ends here may or may not have been committed: retry it with the same order id (that is safe).
type TransportError struct {
	Op         string // the operation, e.g. "POST /v1/redeem"
	StatusCode int    // the HTTP status when there was an answer, else 0
	RequestID  string // the answer's X-Request-Id, when there was an answer that had one
	Err        error  // the cause
}

// Error describes the failure and what to do.
func (e *TransportError) Error() string {
	return fmt.Sprintf("keyvault: %s: %v; check the URL and the network, and retry (a redeem with the same order id)",
		e.Op, e.Err)
}

// Unwrap gives the cause (context.DeadlineExceeded, a net.Error, ...).
func (e *TransportError) Unwrap() error { return e.Err }
