package config

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"

	"moat.dev/moat/internal/check/attach"
	"moat.dev/moat/internal/check/bayes"
	"moat.dev/moat/internal/check/botnet"
	"moat.dev/moat/internal/check/clamav"
	"moat.dev/moat/internal/check/dkim"
	"moat.dev/moat/internal/check/dmarc"
	"moat.dev/moat/internal/check/dnsbl"
	"moat.dev/moat/internal/check/greylist"
	"moat.dev/moat/internal/check/helo"
	"moat.dev/moat/internal/check/lists"
	"moat.dev/moat/internal/check/rdns"
	"moat.dev/moat/internal/check/recipient"
	"moat.dev/moat/internal/check/rules"
	"moat.dev/moat/internal/check/spf"
	"moat.dev/moat/internal/check/uribl"
	"moat.dev/moat/internal/dnsx"
)

// Checks holds each check's own settings. Whether a layer runs, and what
// its findings do, is policy (policy.layers.NAME.mode: reject, tempfail,
// flag, off; observe: true), not here.
type Checks struct {
	Lists     lists.Config     `yaml:"lists"`
	RDNS      rdns.Config      `yaml:"rdns"`
	DNSBL     dnsbl.Config     `yaml:"dnsbl"`
	HELO      helo.Config      `yaml:"helo"`
	Botnet    botnet.Config    `yaml:"botnet"`
	SPF       spf.Config       `yaml:"spf"`
	Recipient recipient.Config `yaml:"recipient"`
	Greylist  greylist.Config  `yaml:"greylist"`
	Attach    attach.Config    `yaml:"attach"`
	ClamAV    clamav.Config    `yaml:"clamav"`
	DKIM      dkim.Config      `yaml:"dkim"`
	DMARC     dmarc.Config     `yaml:"dmarc"`
	URIBL     uribl.Config     `yaml:"uribl"`
	Rules     rules.Config     `yaml:"rules"`
	Bayes     bayes.Config     `yaml:"bayes"`
}

func defaultChecks() Checks {
	return Checks{
		Lists: lists.DefaultConfig(), RDNS: rdns.DefaultConfig(), DNSBL: dnsbl.DefaultConfig(), HELO: helo.DefaultConfig(),
		Botnet: botnet.DefaultConfig(), SPF: spf.DefaultConfig(), Recipient: recipient.DefaultConfig(),
		Greylist: greylist.DefaultConfig(), Attach: attach.DefaultConfig(), ClamAV: clamav.DefaultConfig(),
		DKIM: dkim.DefaultConfig(), DMARC: dmarc.DefaultConfig(), URIBL: uribl.DefaultConfig(), Rules: rules.DefaultConfig(),
		Bayes: bayes.DefaultConfig(),
	}
}

func (c *Checks) validate() error {
	for _, v := range []struct {
		name string
		fn   func() error
	}{
		{"lists", c.Lists.Validate}, {"rdns", c.RDNS.Validate}, {"dnsbl", c.DNSBL.Validate}, {"helo", c.HELO.Validate},
		{"botnet", c.Botnet.Validate}, {"spf", c.SPF.Validate}, {"recipient", c.Recipient.Validate},
		{"greylist", c.Greylist.Validate}, {"attach", c.Attach.Validate}, {"clamav", c.ClamAV.Validate},
		{"dkim", c.DKIM.Validate}, {"dmarc", c.DMARC.Validate}, {"uribl", c.URIBL.Validate}, {"rules", c.Rules.Validate},
		{"bayes", c.Bayes.Validate},
	} {
		if err := v.fn(); err != nil {
			return fmt.Errorf("checks.%s.%w", v.name, err)
		}
	}
	return nil
}

// systemResolvers returns the nameservers of /etc/resolv.conf, or nil.
func systemResolvers() []string {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" && net.ParseIP(fields[1]) != nil {
			out = append(out, net.JoinHostPort(fields[1], "53"))
		}
	}
	return out
}

func defaultDNS() dnsx.Config {
	c := dnsx.DefaultConfig()
	c.Resolvers = nil // filled from /etc/resolv.conf unless given
	c.LocalZones = true
	return c
}
