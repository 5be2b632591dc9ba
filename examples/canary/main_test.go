package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

func newTestServer(t *testing.T, specs ...string) *httptest.Server {
	t.Helper()
	f, err := parseFaults(specs)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(newApp(f).handler())
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, method, url, body string, headers map[string]string) (int, map[string]interface{}) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || strings.HasPrefix(ct, "application/json") {
		var out map[string]interface{}
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d not JSON: %q", method, url, resp.StatusCode, raw)
		}
		return resp.StatusCode, out
	}
	return resp.StatusCode, nil
}

func TestSplitMix64ReferenceValues(t *testing.T) {
	// SplitMix64 seeded with 0: the reference sequence (also checked by the Python tests).
	r := splitMix64{0}
	want := []uint64{0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F}
	for i, w := range want {
		if got := r.next(); got != w {
			t.Fatalf("value %d: got %#x, want %#x", i, got, w)
		}
	}
	if got := fnv1a64("a"); got != 0xAF63DC4C8601EC8C {
		t.Fatalf("fnv1a64(a) = %#x", got)
	}
}

func TestOrderIsDeterministic(t *testing.T) {
	srv := newTestServer(t)
	_, a := do(t, "GET", srv.URL+"/api/orders/42", "", nil)
	_, b := do(t, "GET", srv.URL+"/api/orders/42", "", nil)
	if a["request_id"] == b["request_id"] {
		t.Fatal("request_id should differ per request")
	}
	delete(a, "request_id")
	delete(b, "request_id")
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Fatalf("not deterministic:\n%s\n%s", ja, jb)
	}
	if n := len(a["items"].([]interface{})); n < 1 || n > 5 {
		t.Fatalf("items: %d", n)
	}
	if meta := a["meta"].(map[string]interface{}); meta["served_by"] != "go" {
		t.Fatalf("meta: %v", meta)
	}
}

func TestPprofOnlyWhenPlanted(t *testing.T) {
	srv := newTestServer(t)
	if code, _ := do(t, "GET", srv.URL+"/debug/pprof/", "", nil); code != 404 {
		t.Fatalf("pprof on the serving port by default: %d", code)
	}
	bad := newTestServer(t, "pprof_on_serving_port")
	if code, _ := do(t, "GET", bad.URL+"/debug/pprof/", "", nil); code != 200 {
		t.Fatalf("pprof_on_serving_port: %d", code)
	}
	dbg := httptest.NewServer(debugHandler())
	defer dbg.Close()
	if code, _ := do(t, "GET", dbg.URL+"/debug/pprof/", "", nil); code != 200 {
		t.Fatalf("debug port: %d", code)
	}
}

func TestExpvarHasGoroutinesAndMemstats(t *testing.T) {
	srv := newTestServer(t, "goroutine_leak")
	_, before := do(t, "GET", srv.URL+"/debug/vars", "", nil)
	for i := 0; i < 10; i++ {
		do(t, "GET", srv.URL+"/healthz", "", nil)
	}
	_, after := do(t, "GET", srv.URL+"/debug/vars", "", nil)
	if _, ok := after["memstats"].(map[string]interface{})["PauseNs"]; !ok {
		t.Fatal("memstats.PauseNs missing")
	}
	if after["goroutines"].(float64)-before["goroutines"].(float64) < 10 {
		t.Fatalf("goroutines %v -> %v", before["goroutines"], after["goroutines"])
	}
}

func TestShadowWriteLeavesRealStock(t *testing.T) {
	srv := newTestServer(t)
	body := `{"customer_id":"c-1","items":[{"sku":"SKU-0003","qty":7}]}`
	code, o := do(t, "POST", srv.URL+"/api/orders", body, map[string]string{"X-Gray-Shadow": "1", "X-Trace-ID": "t1"})
	if code != 201 || o["stock_deducted"] != true {
		t.Fatalf("%d %v", code, o)
	}
	_, realInv := do(t, "GET", srv.URL+"/api/inventory/SKU-0003", "", nil)
	_, shadow := do(t, "GET", srv.URL+"/api/inventory/SKU-0003?shadow=1", "", nil)
	if realInv["stock"].(float64) != initialStock || shadow["stock"].(float64) != initialStock-7 {
		t.Fatalf("real %v shadow %v", realInv["stock"], shadow["stock"])
	}
	code, again := do(t, "POST", srv.URL+"/api/orders", body, map[string]string{"X-Gray-Shadow": "1", "X-Trace-ID": "t1"})
	if code != 200 || again["id"] != o["id"] {
		t.Fatalf("replay: %d %v", code, again["id"])
	}
}

func TestBadInput(t *testing.T) {
	srv := newTestServer(t)
	cases := []struct {
		body string
		code int
	}{
		{`{"customer_id":`, 400},
		{`[]`, 400},
		{`{"customer_id":"c","items":[]}`, 400},
		{`{"customer_id":"c","items":[{"sku":"SKU-0001","qty":1.5}]}`, 400},
		{`{"customer_id":"c","items":[{"sku":"NOPE","qty":1}]}`, 422},
	}
	for _, c := range cases {
		code, out := do(t, "POST", srv.URL+"/api/orders", c.body, nil)
		if code != c.code || out["error"] == nil {
			t.Errorf("%s: %d %v", c.body, code, out)
		}
	}
}

func TestParseFaults(t *testing.T) {
	f, err := parseFaults([]string{"rounding, latency=5ms", "stock_deduction"})
	if err != nil || !f.Rounding || f.Latency != 5*time.Millisecond || f.StockDeduction != 0.2 {
		t.Fatalf("%+v %v", f, err)
	}
	for _, bad := range []string{"nope", "rounding=1", "stock_deduction=2", "latency=fast"} {
		if _, err := parseFaults([]string{bad}); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if _, err := parseFaults([]string{"nope"}); !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("error does not name the fault: %v", err)
	}
}

func TestParseGCPressure(t *testing.T) {
	for spec, want := range map[string]time.Duration{
		"gc_pressure": 20 * time.Millisecond, "gc_pressure=5ms": 5 * time.Millisecond,
		"gc_pressure=1s": time.Second, // the bound itself
	} {
		f, err := parseFaults([]string{spec})
		if err != nil || f.GCPressure != want {
			t.Errorf("%s: %v %v", spec, f.GCPressure, err)
		}
	}
	for _, bad := range []string{"gc_pressure=1001ms", "gc_pressure=0ms", "gc_pressure=x"} {
		if _, err := parseFaults([]string{bad}); err == nil || !strings.Contains(err.Error(), "gc_pressure") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// The collections the fault forces pause for about the held time, far above the
// tens of microseconds a collection of this small heap takes otherwise.
func TestGCPressureLengthensPauses(t *testing.T) {
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { gcPressure(ctx, 10*time.Millisecond); close(stopped) }()
	var after runtime.MemStats
	for i := 0; i < 100; i++ { // at most ~10 s
		time.Sleep(100 * time.Millisecond)
		runtime.ReadMemStats(&after)
		if after.NumGC >= before.NumGC+5 {
			break
		}
	}
	cancel()
	<-stopped
	if after.NumGC < before.NumGC+5 {
		t.Fatalf("the fault forced %d collections in 10 s", after.NumGC-before.NumGC)
	}
	var longest uint64
	for n := before.NumGC + 1; n <= after.NumGC && n <= before.NumGC+256; n++ {
		if p := after.PauseNs[(n+255)%256]; p > longest {
			longest = p
		}
	}
	if longest < uint64(5*time.Millisecond) {
		t.Errorf("longest pause %v: the non-preemptible section did not hold the collection", time.Duration(longest))
	}
}
