package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// parseEnvelope decodes and checks an env file. Anything the scheduler
// could trip over is an error, so that the file goes to corrupt/.
func parseEnvelope(b []byte, id string) (*Envelope, error) {
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, err
	}
	if env.ID != id {
		return nil, fmt.Errorf("id %q does not match file name %q", env.ID, id)
	}
	if len(env.Rcpts) == 0 {
		return nil, errors.New("no recipients")
	}
	if env.Received.IsZero() {
		return nil, errors.New("no received time")
	}
	if env.Size < 0 {
		return nil, errors.New("negative size")
	}
	if strings.ContainsAny(env.From, "\r\n") {
		return nil, errors.New("line break in sender")
	}
	for i, r := range env.Rcpts {
		if r.Addr == "" || strings.ContainsAny(r.Addr, "\r\n") {
			return nil, fmt.Errorf("rcpts[%d]: bad address", i)
		}
		if strings.ContainsAny(r.Domain, "\r\n/") {
			return nil, fmt.Errorf("rcpts[%d]: bad domain", i)
		}
		switch r.Status {
		case StatusPending, StatusDelivered, StatusFailed:
		default:
			return nil, fmt.Errorf("rcpts[%d]: unknown status %q", i, r.Status)
		}
		if r.Attempts < 0 {
			return nil, fmt.Errorf("rcpts[%d]: negative attempts", i)
		}
	}
	return &env, nil
}
