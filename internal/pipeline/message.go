package pipeline

import (
	"io"
	"net/textproto"
)

// Message is the spooled message as DATA checks see it: the header parsed
// once, and the raw bytes (header and body, CRLF line endings, exactly as
// received) readable any number of times.
type Message struct {
	Header textproto.MIMEHeader
	Size   int64
	// Open returns a fresh reader over the whole raw message.
	Open func() (io.ReadCloser, error)
}
