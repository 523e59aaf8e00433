package passmark

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LoadOrCreateMaster reads the site master key (hex) from path, creating a
// new random one (mode 0600) if the file does not exist.
func LoadOrCreateMaster(path string) ([]byte, error) {
	key, err := ReadKeyFile(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("passmark: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) { // another process won the race
			return ReadKeyFile(path)
		}
		return nil, fmt.Errorf("passmark: %w", err)
	}
	_, err = f.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("passmark: writing %s: %w", path, err)
	}
	return key, nil
}

// ReadKeyFile reads a hex-encoded key of at least 16 bytes.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("passmark: %s: not a hex key: %v", path, err)
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("passmark: %s: key too short (%d bytes, need 16 or more)", path, len(key))
	}
	return key, nil
}
