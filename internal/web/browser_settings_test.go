package web

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestBrowserSettings drives a real headless Chromium: an end user logs
// in, follows the Settings link of the top bar, sets its tag threshold to
// 3 and saves; the page shows the success flash and the value, and the
// quarantine's preferences hold it.
func TestBrowserSettings(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	e := newTEnv(t)

	bctx := browser(t, bin)

	const sec = `section.settings[data-rcpt="bob@a.example"] `
	art := artifactDir(t)
	var shot []byte
	var flashText, tagValue, currentText string
	err := chromedp.Do(bctx,
		chromedp.Navigate(e.srv.URL+"/quarantine"),
		chromedp.WaitVisible(chromedp.CSS(`#login-form`)),
		chromedp.SendKeys(chromedp.CSS(`#name`), "bob"),
		chromedp.SendKeys(chromedp.CSS(`#password`), password),
		chromedp.Click(chromedp.CSS(`#login-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`table.msgs`)),
		chromedp.Click(chromedp.CSS(`#settings-link`)),
		chromedp.WaitVisible(chromedp.CSS(sec+`input[name=tag]`)),
		chromedp.SendKeys(chromedp.CSS(sec+`input[name=tag]`), "3"),
		chromedp.Click(chromedp.CSS(sec+`form[action="/settings/thresholds"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.flash-ok`)),
		into(&flashText, chromedp.Text(chromedp.CSS(`.flash-ok`))),
		into(&tagValue, chromedp.Value(chromedp.CSS(sec+`input[name=tag]`))),
		into(&currentText, chromedp.Text(chromedp.CSS(sec+`.current`))),
		into(&shot, chromedp.FullScreenshot(100)),
	)
	saveShots(t, art, map[string][]byte{"settings.png": shot})
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if !strings.Contains(flashText, "Spam thresholds saved") {
		t.Errorf("flash: %q", flashText)
	}
	if tagValue != "3" {
		t.Errorf("tag field after saving: %q", tagValue)
	}
	if !strings.Contains(currentText, "tag 3") || !strings.Contains(currentText, "quarantine domain default") {
		t.Errorf("current thresholds: %q", currentText)
	}
	th, err := e.q.Prefs.Thresholds(context.Background(), "bob@a.example")
	if err != nil {
		t.Fatal(err)
	}
	if th.Tag == nil || *th.Tag != 3 || th.Quarantine != nil || th.Reject != nil {
		t.Errorf("stored thresholds: %s", th)
	}
}
