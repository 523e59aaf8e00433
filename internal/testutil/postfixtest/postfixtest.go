// Package postfixtest runs a real, private Postfix instance on a loopback
// port for tests: a customer backend that Moat relays to, that answers
// recipient callouts, speaks XCLIENT/XFORWARD and calls milters.
//
// Each Start creates its own config_directory, queue_directory,
// data_directory and Maildir tree under a fresh temporary directory, listens
// on a free high port of 127.0.0.1 and is stopped (and removed) by
// t.Cleanup. Several instances can run at once. The instance accepts mail for
// Options.Domains (Postfix virtual mailbox domains, delivered to Maildirs) and
// rejects unknown recipients there with "550 5.1.1 ... User unknown in
// virtual mailbox table"; everything else gets "554 5.7.1 Relay access
// denied" unless it is in Options.RelayDomains.
//
// Postfix's master must run as root, so Start skips the test when postfix is
// not installed or the test is not root, and fails it instead when the
// environment variable MOAT_REQUIRE_TOOLS=1 is set (CI). When the test fails,
// Postfix's log (Options' maillog_file) is printed.
//
// Typical use:
//
//	pf := postfixtest.Start(t, postfixtest.Options{
//		Domains:      []string{"example.com"},
//		Recipients:   []string{"alice@example.com"},
//		XClientHosts: []string{"127.0.0.1"},
//	})
//	// ... deliver to pf.Addr ...
//	files := pf.WaitMessages(t, 1, 20*time.Second)
package postfixtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Options configures an instance. The zero value gives a backend for
// example.com with the single mailbox postmaster@example.com.
type Options struct {
	// Domains are the virtual mailbox domains (mail is delivered to
	// Maildirs). Default: example.com.
	Domains []string
	// Recipients are the valid mailboxes: "user@domain", or a bare "user"
	// meaning that user in every domain of Domains. Default: postmaster.
	// Any other recipient in Domains is rejected with 550 5.1.1.
	Recipients []string
	// RelayDomains are accepted for any recipient and relayed to RelayHost.
	RelayDomains []string
	// RelayHost is the next hop for RelayDomains, "127.0.0.1:PORT" (e.g. a
	// sink). Required with RelayDomains.
	RelayHost string
	// XClientHosts become smtpd_authorized_xclient_hosts (e.g. "127.0.0.1").
	XClientHosts []string
	// XForwardHosts become smtpd_authorized_xforward_hosts.
	XForwardHosts []string
	// Milter becomes smtpd_milters, e.g. "inet:127.0.0.1:PORT".
	Milter string
	// MilterDefaultAction is milter_default_action; default "tempfail".
	MilterDefaultAction string
	// TLS makes smtpd offer STARTTLS with a generated self-signed
	// certificate for Hostname and 127.0.0.1 (see Instance.CertFile).
	TLS bool
	// Hostname is myhostname; default "backend.moat.test".
	Hostname string
	// Main holds extra main.cf parameters; they override the generated ones.
	Main map[string]string
}

// Instance is a running Postfix.
type Instance struct {
	// Addr is the smtpd address, "127.0.0.1:PORT".
	Addr string
	// Port is the smtpd port.
	Port int
	// Dir is the instance's root directory (etc/, queue/, data/, mail/,
	// maillog).
	Dir string
	// ConfigDir is the config_directory, for `postfix -c` / `postconf -c`.
	ConfigDir string
	// Hostname is myhostname (appears in Postfix's Received fields).
	Hostname string
	// CertFile is the PEM certificate smtpd presents when Options.TLS; it
	// is its own CA, so a client can trust it with this file.
	CertFile string

	domains []string
	master  int // pid
	stopped bool
}

// RequireTools reports whether missing external tools must fail tests
// instead of skipping them (MOAT_REQUIRE_TOOLS=1, set in CI).
func RequireTools() bool { return os.Getenv("MOAT_REQUIRE_TOOLS") == "1" }

func skipOrFatal(t testing.TB, format string, args ...any) {
	t.Helper()
	if RequireTools() {
		t.Fatalf("postfixtest: "+format, args...)
	}
	t.Skipf("postfixtest: "+format, args...)
}

// Start starts an instance and registers its stop with t.Cleanup.
func Start(t testing.TB, opt Options) *Instance {
	t.Helper()
	daemonDir, err := findDaemonDir()
	if err != nil {
		skipOrFatal(t, "postfix not available: %v", err)
	}
	if os.Geteuid() != 0 {
		skipOrFatal(t, "postfix's master needs root (running as uid %d)", os.Geteuid())
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		skipOrFatal(t, "no postfix user: %v", err)
	}
	if opt.Hostname == "" {
		opt.Hostname = "backend.moat.test"
	}
	if len(opt.Domains) == 0 {
		opt.Domains = []string{"example.com"}
	}
	if len(opt.Recipients) == 0 {
		opt.Recipients = []string{"postmaster"}
	}
	if opt.MilterDefaultAction == "" {
		opt.MilterDefaultAction = "tempfail"
	}
	if len(opt.RelayDomains) > 0 && opt.RelayHost == "" {
		t.Fatal("postfixtest: RelayDomains needs RelayHost")
	}

	// Our own directory, not t.TempDir(): the postfix user must be able to
	// traverse it, and it must outlive the instance's stop.
	dir, err := os.MkdirTemp("", "postfixtest-")
	if err != nil {
		t.Fatal(err)
	}
	in := &Instance{Dir: dir, ConfigDir: filepath.Join(dir, "etc"), Hostname: opt.Hostname, domains: opt.Domains}
	t.Cleanup(func() {
		in.Stop()
		if t.Failed() {
			t.Logf("postfixtest: maillog of %s:\n%s", in.Addr, in.Log())
		}
		os.RemoveAll(dir)
	})
	uid, _ := strconv.Atoi(pf.Uid)
	gid, _ := strconv.Atoi(pf.Gid)
	if err := in.layout(uid, gid, opt); err != nil {
		t.Fatalf("postfixtest: %v", err)
	}

	// Choose a free port and start master; another process may take the
	// port between our probe and master's bind, so retry a few times.
	var lastErr error
	for try := 0; try < 4; try++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if err := in.writeConfig(port, uid, gid, opt, daemonDir); err != nil {
			t.Fatalf("postfixtest: %v", err)
		}
		// Postfix re-reads a config file whose mtime is in the last second
		// until it is older (about 2 s at start-up): back-date them all.
		files, _ := filepath.Glob(filepath.Join(in.ConfigDir, "*"))
		past := time.Now().Add(-time.Minute)
		for _, f := range files {
			os.Chtimes(f, past, past)
		}
		cmd := exec.Command(filepath.Join(daemonDir, "master"), "-c", in.ConfigDir, "-w")
		out, err := cmd.CombinedOutput()
		if err != nil {
			lastErr = fmt.Errorf("master -w: %v: %s%s", err, out, in.Log())
			continue
		}
		pidText, err := os.ReadFile(filepath.Join(dir, "queue", "pid", "master.pid"))
		if err != nil {
			t.Fatalf("postfixtest: %v", err)
		}
		in.master, _ = strconv.Atoi(strings.TrimSpace(string(pidText)))
		in.Port = port
		in.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		return in
	}
	t.Fatalf("postfixtest: cannot start postfix: %v", lastErr)
	return nil
}

func findDaemonDir() (string, error) {
	if _, err := exec.LookPath("postfix"); err != nil {
		if _, err2 := os.Stat("/usr/sbin/postfix"); err2 != nil {
			return "", err
		}
	}
	for _, d := range []string{"/usr/lib/postfix/sbin", "/usr/libexec/postfix"} {
		if _, err := os.Stat(filepath.Join(d, "master")); err == nil {
			return d, nil
		}
	}
	out, err := exec.Command("postconf", "-d", "-h", "daemon_directory").Output()
	if err != nil {
		return "", fmt.Errorf("postconf: %w", err)
	}
	d := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(d, "master")); err != nil {
		return "", err
	}
	return d, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// layout creates the directory tree. The queue directories are made as
// Postfix's post-install would (postfix-files), which is what `postfix
// start` spends most of its ~3 s on; master -w then starts in ~0.1 s.
func (in *Instance) layout(uid, gid int, opt Options) error {
	if err := os.Chmod(in.Dir, 0o755); err != nil {
		return err
	}
	postdrop := gid
	if g, err := user.LookupGroup("postdrop"); err == nil {
		postdrop, _ = strconv.Atoi(g.Gid)
	}
	type d struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}
	dirs := []d{
		{"etc", 0, 0, 0o755}, {"queue", 0, 0, 0o755}, {"queue/pid", 0, 0, 0o755},
		{"data", uid, gid, 0o700}, {"mail", uid, gid, 0o755},
		{"queue/maildrop", uid, postdrop, 0o730}, {"queue/public", uid, postdrop, 0o710},
	}
	for _, q := range []string{"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace"} {
		dirs = append(dirs, d{"queue/" + q, uid, 0, 0o700})
	}
	for _, x := range dirs {
		p := filepath.Join(in.Dir, x.path)
		if err := os.Mkdir(p, x.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, x.mode); err != nil { // umask
			return err
		}
		if err := os.Chown(p, x.uid, x.gid); err != nil {
			return err
		}
	}
	// Mailbox map: address -> Maildir (trailing slash = Maildir format).
	var vm bytes.Buffer
	for _, r := range opt.Recipients {
		addrs := []string{r}
		if !strings.Contains(r, "@") {
			addrs = nil
			for _, dom := range opt.Domains {
				addrs = append(addrs, r+"@"+dom)
			}
		}
		for _, a := range addrs {
			local, dom, _ := strings.Cut(strings.ToLower(a), "@")
			fmt.Fprintf(&vm, "%s %s/%s/\n", a, dom, local)
		}
	}
	if err := os.WriteFile(filepath.Join(in.ConfigDir, "vmailbox"), vm.Bytes(), 0o644); err != nil {
		return err
	}
	if opt.TLS {
		in.CertFile = filepath.Join(in.ConfigDir, "cert.pem")
		if err := writeCert(in.CertFile, filepath.Join(in.ConfigDir, "key.pem"), opt.Hostname); err != nil {
			return err
		}
	}
	return nil
}

func (in *Instance) writeConfig(port, uid, gid int, opt Options, daemonDir string) error {
	main := map[string]string{
		"compatibility_level":                 "3.6",
		"queue_directory":                     filepath.Join(in.Dir, "queue"),
		"data_directory":                      filepath.Join(in.Dir, "data"),
		"daemon_directory":                    daemonDir,
		"mail_owner":                          "postfix",
		"myhostname":                          opt.Hostname,
		"mydomain":                            "moat.test",
		"myorigin":                            "$myhostname",
		"mydestination":                       "",
		"local_recipient_maps":                "",
		"alias_maps":                          "",
		"alias_database":                      "",
		"inet_interfaces":                     "127.0.0.1",
		"inet_protocols":                      "ipv4",
		"mynetworks":                          "127.0.0.0/8",
		"syslog_name":                         "postfix-moattest-" + strconv.Itoa(port),
		"maillog_file":                        filepath.Join(in.Dir, "maillog"),
		"maillog_file_prefixes":               in.Dir,
		"biff":                                "no",
		"smtputf8_enable":                     "yes",
		"relayhost":                           "",
		"virtual_mailbox_domains":             strings.Join(opt.Domains, " "),
		"virtual_mailbox_base":                filepath.Join(in.Dir, "mail"),
		"virtual_mailbox_maps":                "texthash:" + filepath.Join(in.ConfigDir, "vmailbox"),
		"virtual_uid_maps":                    "static:" + strconv.Itoa(uid),
		"virtual_gid_maps":                    "static:" + strconv.Itoa(gid),
		"smtpd_relay_restrictions":            "reject_unauth_destination",
		"smtpd_recipient_restrictions":        "reject_unauth_destination",
		"unknown_virtual_mailbox_reject_code": "550",
		"smtpd_banner":                        "$myhostname ESMTP Postfix",
		"smtpd_authorized_xclient_hosts":      strings.Join(opt.XClientHosts, " "),
		"smtpd_authorized_xforward_hosts":     strings.Join(opt.XForwardHosts, " "),
		// Deliver at once; a test must not wait for a retry schedule.
		"queue_run_delay":         "1s",
		"minimal_backoff_time":    "1s",
		"maximal_backoff_time":    "2s",
		"smtp_tls_security_level": "none",
	}
	if opt.Milter != "" {
		main["smtpd_milters"] = opt.Milter
		main["milter_default_action"] = opt.MilterDefaultAction
	}
	if len(opt.RelayDomains) > 0 {
		main["relay_domains"] = strings.Join(opt.RelayDomains, " ")
		var tm bytes.Buffer
		h, p, err := net.SplitHostPort(opt.RelayHost)
		if err != nil {
			return fmt.Errorf("RelayHost: %w", err)
		}
		for _, d := range opt.RelayDomains {
			fmt.Fprintf(&tm, "%s relay:[%s]:%s\n", d, h, p)
		}
		tp := filepath.Join(in.ConfigDir, "transport")
		if err := os.WriteFile(tp, tm.Bytes(), 0o644); err != nil {
			return err
		}
		main["transport_maps"] = "texthash:" + tp
	}
	if opt.TLS {
		main["smtpd_tls_security_level"] = "may"
		main["smtpd_tls_cert_file"] = in.CertFile
		main["smtpd_tls_key_file"] = filepath.Join(in.ConfigDir, "key.pem")
		main["smtpd_tls_received_header"] = "yes"
	}
	for k, v := range opt.Main {
		main[k] = v
	}
	keys := make([]string, 0, len(main))
	for k := range main {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var mc bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&mc, "%s = %s\n", k, main[k])
	}
	if err := os.WriteFile(filepath.Join(in.ConfigDir, "main.cf"), mc.Bytes(), 0o644); err != nil {
		return err
	}
	master := fmt.Sprintf(`127.0.0.1:%d inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`, port)
	return os.WriteFile(filepath.Join(in.ConfigDir, "master.cf"), []byte(master), 0o644)
}

// Stop stops the instance (t.Cleanup calls it; calling it twice is fine).
// It signals the master it started, waits for it to exit, and then for
// the SMTP port to refuse connections: an smtpd child that inherited the
// listening socket goes away a moment after its master.
func (in *Instance) Stop() {
	if in.stopped || in.master <= 0 {
		in.stopped = true
		return
	}
	in.stopped = true
	p := in.master
	if err := syscall.Kill(p, syscall.SIGTERM); err != nil {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(p) {
		if time.Now().After(deadline) {
			syscall.Kill(p, syscall.SIGKILL)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", in.Addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether process pid exists and is not a zombie (the
// daemonised master's parent may reap it late).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	// pid (comm) STATE ...; comm may contain spaces or parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// Log returns the instance's maillog so far.
func (in *Instance) Log() string {
	b, _ := os.ReadFile(filepath.Join(in.Dir, "maillog"))
	return string(b)
}

// Maildir returns the Maildir of a mailbox: "user@domain", or a bare "user"
// in the first of Options.Domains. It exists once mail was delivered.
func (in *Instance) Maildir(addr string) string {
	local, dom, ok := strings.Cut(strings.ToLower(addr), "@")
	if !ok {
		dom = in.domains[0]
	}
	return filepath.Join(in.Dir, "mail", dom, local)
}

// Messages returns the files delivered so far to the mailbox addr (new/),
// oldest first.
func (in *Instance) Messages(addr string) []string {
	return listNew(filepath.Join(in.Maildir(addr), "new"))
}

// AllMessages returns every file delivered so far to any mailbox.
func (in *Instance) AllMessages() []string {
	dirs, _ := filepath.Glob(filepath.Join(in.Dir, "mail", "*", "*", "new"))
	var out []string
	for _, d := range dirs {
		out = append(out, listNew(d)...)
	}
	return out
}

func listNew(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	type f struct {
		p string
		t time.Time
	}
	var fs []f
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			fs = append(fs, f{filepath.Join(dir, e.Name()), info.ModTime()})
		}
	}
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].t.Before(fs[j].t) })
	out := make([]string, len(fs))
	for i := range fs {
		out[i] = fs[i].p
	}
	return out
}

// WaitMessages waits until at least n messages were delivered to any
// mailbox and returns their paths; it fails the test (printing the maillog)
// after timeout.
func (in *Instance) WaitMessages(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := in.AllMessages()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfixtest: %d of %d messages delivered after %v; maillog:\n%s", len(got), n, timeout, in.Log())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// writeCert writes a self-signed ECDSA certificate (its own CA) for host
// and 127.0.0.1.
func writeCert(certFile, keyFile, host string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}
