package queue

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
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

// A committed message file (<id>.eml) holds the message bytes followed by
// the envelope they were committed with, so that a commit writes and
// fsyncs one file, not two:
//
//	message bytes (Envelope.Size) | envelope JSON | footer
//
// The 16-byte footer is the magic "MOATENV1", then the JSON's length and
// CRC-32C, both big-endian uint32. Later changes of the envelope (delivery
// attempts, hold, release) are written to <id>.env, which takes precedence
// over the trailer. Readers of the message take the first Envelope.Size
// bytes only.
const (
	trailerMagic = "MOATENV1"
	footerLen    = 16
)

// appendTrailer writes envJSON and its footer to w.
func appendTrailer(w io.Writer, envJSON []byte) error {
	var foot [footerLen]byte
	copy(foot[:], trailerMagic)
	binary.BigEndian.PutUint32(foot[8:], uint32(len(envJSON)))
	binary.BigEndian.PutUint32(foot[12:], crc32.Checksum(envJSON, castagnoli))
	if _, err := w.Write(envJSON); err != nil {
		return err
	}
	_, err := w.Write(foot[:])
	return err
}

// errNoTrailer means a message file ends without a (complete, intact)
// envelope trailer: a draft that was never committed, or one whose commit
// a crash cut short.
var errNoTrailer = errors.New("no envelope trailer")

// readTrailer reads the envelope committed at the end of a message file.
func readTrailer(f *os.File, id string) (*Envelope, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < footerLen {
		return nil, errNoTrailer
	}
	var foot [footerLen]byte
	if _, err := f.ReadAt(foot[:], size-footerLen); err != nil {
		return nil, err
	}
	if string(foot[:8]) != trailerMagic {
		return nil, errNoTrailer
	}
	n := int64(binary.BigEndian.Uint32(foot[8:]))
	if n > maxEnvSize || n > size-footerLen {
		return nil, errNoTrailer
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, size-footerLen-n); err != nil {
		return nil, err
	}
	if crc32.Checksum(b, castagnoli) != binary.BigEndian.Uint32(foot[12:]) {
		return nil, errNoTrailer
	}
	env, err := parseEnvelope(b, id)
	if err != nil {
		return nil, err
	}
	if env.Size != size-footerLen-n {
		return nil, fmt.Errorf("envelope trailer says %d message bytes, file holds %d", env.Size, size-footerLen-n)
	}
	return env, nil
}

// readEnvelope returns the current envelope of dir/<id>: the .env file
// when there is one, else the .eml's trailer. hasEnv reports which.
func readEnvelope(root *os.Root, dir, id string) (env *Envelope, hasEnv bool, err error) {
	f, err := root.Open(path(dir, id, ".env"))
	if err == nil {
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, true, err
		}
		if st.Size() > maxEnvSize {
			return nil, true, fmt.Errorf("%s/%s.env: %d bytes is too large", dir, id, st.Size())
		}
		b := make([]byte, st.Size())
		if _, err := io.ReadFull(f, b); err != nil {
			return nil, true, err
		}
		env, err := parseEnvelope(b, id)
		return env, true, err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	m, err := root.Open(path(dir, id, ".eml"))
	if err != nil {
		return nil, false, err
	}
	defer m.Close()
	env, err = readTrailer(m, id)
	return env, false, err
}

// bodyReader returns f limited to the message bytes (not the trailer).
func bodyReader(f *os.File, size int64) io.ReadCloser {
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, size), f}
}
