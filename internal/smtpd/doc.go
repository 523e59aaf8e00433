// Package smtpd is Moat's inbound SMTP server: the listener and session
// that customers' MX records point at. It wraps emersion/go-smtp, whose API
// does not leak out of this package.
//
// go-smtp parses commands and keeps their sequence; a connection wrapper
// (sconn, conn.go) owns framing, deadlines, STARTTLS, limits and every
// reply byte, because go-smtp's own handling is unsafe for a public MX
// (lenient address parsing that strips source routes and quotes, a dataReader
// that passes bare LF, a per-read rather than per-line timeout model, a
// connection-killing line limit, a fixed error threshold of 3, plain errors
// shown to the client as 554). See the sconn comment for the split.
//
// Decisions:
//   - The draft is created lazily at DATA; the queue ID is the draft's ID and
//     the per-transaction log line carries it (empty when no DATA happened).
//   - Recipients of several customer domains may share a transaction; DATA
//     is decided under the first recipient's domain's policy.
//   - Lines over max_line_length in DATA: 554 5.6.0 after the whole message
//     was read (see replyLongLine). Command lines over 512: 500 5.5.2, the
//     session continues and the error counts toward max_errors.
//   - BDAT/CHUNKING and AUTH are not offered on this listener.
//   - soft_bounce turns 5xx into 4xx except protocol errors (x.5.x).
package smtpd
