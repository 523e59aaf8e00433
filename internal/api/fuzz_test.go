package api

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"moat.dev/moat/internal/policy"
)

// FuzzDomainJSON: the domain request decoder never panics, and whatever it
// accepts survives the trip out through the API's JSON form and back in
// unchanged (what GET shows, PUT accepts).
func FuzzDomainJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"example.com","backends":["mx.example.com:25"]}`,
		`{"name":"Example.COM.","partner":"isp1","backends":["10.0.0.1","[2001:db8::1]:2525"],"tls":"required","max_conns":3,"recipient_mode":"table","catch_all":true}`,
		`{"name":"a.test","backends":["mx"],"policy":{"tag_score":3,"layers":{"dnsbl":{"mode":"flag","observe":true,"on_error":"ignore","flag_score":2.5}},"appeal":"see https://x"}}`,
		`{"name":"a.test","backends":["mx"],"policy":null}`,
		`{"name":"a.test","backends":["mx:0"]}`,
		`{"name":"a.test","backends":["mx"],"policy":{"layers":{"x":null}}}`,
		`{"name":"a.test","backends":["mx"]} []`,
		`[]`, `null`, `{"name":1}`,
	} {
		f.Add([]byte(s))
	}
	site := policy.Default()
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := parseDomain(bytes.NewReader(body), site)
		if err != nil {
			if _, ok := err.(*httpError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		out, err := domainJSON(d)
		if err != nil {
			t.Fatalf("accepted domain does not convert back: %v (%+v)", err, d)
		}
		b, err := json.Marshal(out)
		if err != nil {
			t.Fatal(err)
		}
		d2, err := parseDomain(bytes.NewReader(b), site)
		if err != nil {
			t.Fatalf("own output %s rejected: %v", b, err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("round trip changed the domain:\n%+v\n%+v\nvia %s", d, d2, b)
		}
	})
}
