package smtpd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// loadTLS returns the STARTTLS configuration: the configured certificate,
// or a self-signed ECDSA one generated once and kept in cfg.TLSDir (in
// memory only when TLSDir is empty). Self-signed is what most MX hosts
// have; senders do opportunistic TLS and do not verify it.
func loadTLS(cfg *Config) (*tls.Config, error) {
	if cfg.DisableTLS {
		return nil, nil
	}
	var cert tls.Certificate
	var err error
	switch {
	case cfg.TLSCert != "":
		cert, err = tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls_cert: %w", err)
		}
	case cfg.TLSDir != "":
		certFile, keyFile := filepath.Join(cfg.TLSDir, "smtpd-cert.pem"), filepath.Join(cfg.TLSDir, "smtpd-key.pem")
		cert, err = tls.LoadX509KeyPair(certFile, keyFile)
		if errors.Is(err, fs.ErrNotExist) {
			var certPEM, keyPEM []byte
			certPEM, keyPEM, err = selfSigned(cfg.Hostname)
			if err == nil {
				err = writeKeyPair(cfg.TLSDir, certFile, keyFile, certPEM, keyPEM)
			}
			if err == nil {
				cert, err = tls.X509KeyPair(certPEM, keyPEM)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("tls_dir: %w", err)
		}
	default:
		certPEM, keyPEM, err := selfSigned(cfg.Hostname)
		if err == nil {
			cert, err = tls.X509KeyPair(certPEM, keyPEM)
		}
		if err != nil {
			return nil, fmt.Errorf("tls: generating a certificate: %w", err)
		}
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func selfSigned(host string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// writeKeyPair writes both files atomically (temp file, fsync, rename).
func writeKeyPair(dir, certFile, keyFile string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{keyFile, keyPEM}, {certFile, certPEM}} {
		tmp, err := os.CreateTemp(dir, ".tmp-*")
		if err != nil {
			return err
		}
		_, err = tmp.Write(f.data)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), f.name)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
