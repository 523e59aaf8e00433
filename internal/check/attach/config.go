package attach

import (
	"fmt"
	"strings"
)

// Action is what a finding does to the message.
type Action string

const (
	ActionReject     Action = "reject"     // 554 5.7.1 at the end of DATA
	ActionQuarantine Action = "quarantine" // held for review
	ActionFlag       Action = "flag"       // scored only
)

func (a Action) valid() bool {
	return a == ActionReject || a == ActionQuarantine || a == ActionFlag
}

// Rule is the action and score of one kind of finding. The score is added
// to the message's total whatever the action (it is what counts when the
// layer runs in flag mode).
type Rule struct {
	Action Action  `yaml:"action"`
	Score  float64 `yaml:"score"`
}

// Policy is the attachment policy of one customer domain (or the site).
// A domain's override replaces the whole Policy; start from DefaultPolicy.
type Policy struct {
	// BlockedExtensions are file name extensions (".exe", case-insensitive)
	// refused wherever they occur: attachment names and names inside ZIP
	// archives.
	BlockedExtensions []string `yaml:"blocked_extensions"`
	// BlockedTypes are media types ("application/x-msdownload") refused
	// whether declared in Content-Type or recognised from the content
	// (Windows PE and ELF executables).
	BlockedTypes []string `yaml:"blocked_types"`

	// BlockedExtension: a name with a blocked extension. Default reject, 10.
	BlockedExtension Rule `yaml:"blocked_extension"`
	// BlockedType: a part whose declared or sniffed type is blocked.
	// Default reject, 10.
	BlockedType Rule `yaml:"blocked_type"`
	// DoubleExtension: a document-looking name hiding an executable
	// ("invoice.pdf.exe", "invoice.pdf      .js"). Default reject, 10.
	DoubleExtension Rule `yaml:"double_extension"`
	// DeceptiveName: a name with bidirectional overrides or invisible
	// characters ("invoice\u202Efdp.exe" shows as "invoiceexe.pdf").
	// Default reject, 10.
	DeceptiveName Rule `yaml:"deceptive_name"`
	// EncryptedArchive: a ZIP with encrypted entries, which no scanner can
	// look into. Default flag, 4.
	EncryptedArchive Rule `yaml:"encrypted_archive"`
	// ArchiveLimit: an archive that could not be fully inspected (too big,
	// too many entries, nested too deep, corrupt). Default flag, 1.
	ArchiveLimit Rule `yaml:"archive_limit"`
	// MIMEDepth: MIME parts nested deeper than max_depth, which neither
	// this check nor, past its own recursion limit, the virus scanner
	// looks into (a known way to slip malware past both). Default
	// quarantine, 5: a person decides.
	MIMEDepth Rule `yaml:"mime_depth"`
}

// DefaultBlockedExtensions are executable and script types that have no
// business in business mail, and disk images used to smuggle them.
var DefaultBlockedExtensions = []string{
	".exe", ".scr", ".js", ".jse", ".vbs", ".vbe", ".bat", ".cmd", ".com", ".pif", ".lnk",
	".iso", ".img", ".vhd", ".vhdx", ".hta", ".msi", ".msp", ".msc", ".jar", ".ps1", ".psm1",
	".wsf", ".wsh", ".sct", ".cpl", ".reg", ".scf", ".chm", ".appx", ".msix", ".xll", ".dll",
}

// DefaultBlockedTypes are the media types of executables.
var DefaultBlockedTypes = []string{
	"application/x-msdownload", "application/x-dosexec", "application/x-msdos-program",
	"application/x-ms-installer", "application/x-msi", "application/x-ms-shortcut",
	"application/hta", "application/x-executable", "application/vnd.microsoft.portable-executable",
}

// DefaultPolicy returns the default policy: block the default extensions
// and types, double extensions and deceptive names; score encrypted
// archives.
func DefaultPolicy() Policy {
	return Policy{
		BlockedExtensions: append([]string(nil), DefaultBlockedExtensions...),
		BlockedTypes:      append([]string(nil), DefaultBlockedTypes...),
		BlockedExtension:  Rule{ActionReject, 10},
		BlockedType:       Rule{ActionReject, 10},
		DoubleExtension:   Rule{ActionReject, 10},
		DeceptiveName:     Rule{ActionReject, 10},
		EncryptedArchive:  Rule{ActionFlag, 4},
		ArchiveLimit:      Rule{ActionFlag, 1},
		MIMEDepth:         Rule{ActionQuarantine, 5},
	}
}

// Validate checks the policy; errors name the key.
func (p *Policy) Validate() error {
	for _, e := range p.BlockedExtensions {
		if !strings.HasPrefix(e, ".") || len(e) < 2 || strings.ContainsAny(e[1:], ". /\\") {
			return fmt.Errorf("blocked_extensions: %q: want a single extension like \".exe\"", e)
		}
	}
	for _, t := range p.BlockedTypes {
		if i := strings.IndexByte(t, '/'); i <= 0 || i == len(t)-1 || strings.ContainsAny(t, " ;") {
			return fmt.Errorf("blocked_types: %q: want a media type like \"application/x-msdownload\"", t)
		}
	}
	for key, r := range map[string]Rule{
		"blocked_extension": p.BlockedExtension, "blocked_type": p.BlockedType, "double_extension": p.DoubleExtension,
		"deceptive_name": p.DeceptiveName, "encrypted_archive": p.EncryptedArchive, "archive_limit": p.ArchiveLimit,
		"mime_depth": p.MIMEDepth,
	} {
		if !r.Action.valid() {
			return fmt.Errorf("%s.action: %q is not one of reject, quarantine, flag", key, r.Action)
		}
		if r.Score < 0 {
			return fmt.Errorf("%s.score: must be >= 0", key)
		}
	}
	return nil
}

// Config is the attachment check's server configuration: the limits that
// bound the work per message, and the site policy (domains may override
// the policy).
type Config struct {
	// MaxParts is the number of MIME parts inspected; the rest are skipped
	// (and scored as archive_limit).
	MaxParts int `yaml:"max_parts"`
	// MaxDepth is the MIME nesting depth followed (multipart and attached
	// messages).
	MaxDepth int `yaml:"max_depth"`
	// MaxArchiveBytes is the largest archive read into memory to be
	// inspected, and the most decompressed bytes read of one nested archive.
	MaxArchiveBytes int64 `yaml:"max_archive_bytes"`
	// MaxArchiveEntries is the number of entries of one archive inspected.
	MaxArchiveEntries int `yaml:"max_archive_entries"`
	// MaxArchiveNesting is how deep archives inside archives are opened
	// (1: only the attached archive; 2: also archives inside it).
	MaxArchiveNesting int `yaml:"max_archive_nesting"`
	// MaxTotalBytes bounds the decoded bytes read over the whole message.
	MaxTotalBytes int64 `yaml:"max_total_bytes"`
	// Policy is the site policy, used for domains without their own.
	Policy Policy `yaml:"policy"`
}

// DefaultConfig returns safe production limits (100 parts, depth 10,
// archives up to 10 MiB with 1000 entries, nesting 2, 32 MiB per message)
// and DefaultPolicy.
func DefaultConfig() Config {
	return Config{
		MaxParts:          100,
		MaxDepth:          10,
		MaxArchiveBytes:   10 << 20,
		MaxArchiveEntries: 1000,
		MaxArchiveNesting: 2,
		MaxTotalBytes:     32 << 20,
		Policy:            DefaultPolicy(),
	}
}

// Validate checks the configuration; errors name the key.
func (c *Config) Validate() error {
	switch {
	case c.MaxParts < 1:
		return fmt.Errorf("max_parts: must be >= 1")
	case c.MaxDepth < 1:
		return fmt.Errorf("max_depth: must be >= 1")
	case c.MaxArchiveBytes < 1024:
		return fmt.Errorf("max_archive_bytes: must be >= 1024")
	case c.MaxArchiveEntries < 1:
		return fmt.Errorf("max_archive_entries: must be >= 1")
	case c.MaxArchiveNesting < 0 || c.MaxArchiveNesting > 5:
		return fmt.Errorf("max_archive_nesting: must be 0..5")
	case c.MaxTotalBytes < c.MaxArchiveBytes:
		return fmt.Errorf("max_total_bytes: must be >= max_archive_bytes")
	}
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("policy.%w", err)
	}
	return nil
}
