package users

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

// TestInitIsCheap: loading the package does not hash the dummy password
// (argon2: 19 MiB), which every moat command that links it would pay;
// the first login of an unknown user does. The init trace of a fresh
// test binary gives the bytes the package's initialization allocated.
func TestInitIsCheap(t *testing.T) {
	if os.Getenv("MOAT_USERS_INIT_CHILD") == "1" {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInitIsCheap$")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1", "MOAT_USERS_INIT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	m := regexp.MustCompile(`init moat\.dev/moat/internal/users @[\d.]+ ms, [\d.]+ ms clock, (\d+) bytes`).FindSubmatch(out)
	// No line: the package has nothing to initialize.
	if m != nil {
		if n, _ := strconv.Atoi(string(m[1])); n > 1<<20 {
			t.Fatalf("package init allocated %d bytes", n)
		}
	}
	if !VerifyPassword(dummyHash(), "moat-dummy-password") {
		t.Fatal("the dummy hash does not verify")
	}
}
