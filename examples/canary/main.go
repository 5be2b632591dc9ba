// Command canary is the Go rewrite of graygate's demo order service: the canary.
//
// It serves the same API as examples/orders.py and, with no fault planted, byte-for-byte
// the same JSON apart from the noisy fields request_id and meta:
//
//	GET  /api/orders/{id}      an order generated deterministically from the id (or the one a POST created)
//	POST /api/orders           create an order, deduct stock (201; 200 on a replay of the same X-Trace-ID);
//	                           X-Gray-Shadow: 1 writes to the shadow store instead
//	GET  /api/inventory/{sku}  real stock; ?shadow=1 (or X-Gray-Shadow: 1) the shadow stock
//	GET  /healthz
//	GET  /debug/vars           expvar: cmdline, memstats, goroutines
//
// pprof is served only on the separate -debug-listen port, unless the fault
// pprof_on_serving_port is planted. The collector is tuned with the usual GOGC variable.
//
// Faults: env ORDERS_FAULTS=a,b=v and/or repeated -fault a -fault b=v:
// rounding, timestamp_format, item_order, stock_deduction[=0.2], latency[=20ms],
// goroutine_leak, gc_pressure[=20ms], pprof_on_serving_port, stock_write[=0.2] (with a
// database: the answer is the primary's, the first stock move of a fraction of orders
// deducts one more).
//
// Writes: -database URL (env ORDERS_DATABASE_URL) and -db-schema (env ORDERS_DB_SCHEMA,
// default orders_demo): each order a POST creates is written as a row of orders and one row
// of stock_moves per line, with the request's X-Trace-ID; X-Gray-Shadow: 1 writes
// shadow_orders and shadow_stock_moves instead. Needs the pq build tag (db_pq.go).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	version = "2.0.0"

	numSKUs         = 50
	initialStock    = 1_000_000
	inventoryTime   = 1_735_689_600 // 2025-01-01T00:00:00Z: when the inventory was seeded
	generatedEpoch  = 1_735_689_600 // generated orders: created within 2025
	newOrderEpoch   = 1_767_225_600 // orders made by POST: within 180 days of 2026-01-01
	createdIDBase   = 1_000_000_000_000
	counterIDBase   = 2_000_000_000_000
	taxBasisPoints  = 825
	maxBodyBytes    = 1 << 20
	maxItems        = 50
	maxQty          = 1000
	saltOrder       = 0x6F726465725F6964
	saltSKU         = 0x736B755F63617461
	saltCustomer    = 0x637573746F6D6572
	saltCreated     = 0x637265617465645F
	saltFault       = 0x6661756C745F7374
	saltWrite       = 0x77726974655F7174 // the write faults' draw
	contentTypeJSON = "application/json; charset=utf-8"
)

var (
	firstNames = []string{"Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace",
		"Hedy", "John", "Katherine", "Ken", "Leslie", "Margaret", "Niklaus", "Radia"}
	lastNames = []string{"Allen", "Babbage", "Cerf", "Dijkstra", "Hamilton", "Hopper", "Johnson", "Kay",
		"Knuth", "Lamport", "Liskov", "Lovelace", "Perlman", "Ritchie", "Thompson", "Wirth"}
	tiers      = []string{"bronze", "silver", "gold", "platinum"}
	statuses   = []string{"pending", "paid", "shipped", "delivered", "cancelled"}
	currencies = []string{"USD", "EUR", "GBP"}
	adjectives = []string{"Red", "Blue", "Green", "Steel", "Oak", "Compact", "Deluxe", "Classic", "Smart", "Tiny"}
	nouns      = []string{"Widget", "Gadget", "Lamp", "Chair", "Kettle", "Backpack", "Notebook", "Speaker", "Mug", "Cable"}

	customerIDRe = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)
	orderIDRe    = regexp.MustCompile(`^[0-9]{1,13}$`)
	fractionRe   = regexp.MustCompile(`^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$`)
	durationRe   = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s)$`)

	errCustomer = "customer_id must be a string of 1-64 characters [A-Za-z0-9_.:-]"
	errItems    = fmt.Sprintf("items must be a non-empty array of at most %d items", maxItems)

	publishOnce sync.Once
)

// ---------------------------------------------------------------------------- determinism

// splitMix64 is SplitMix64 (Steele, Lea, Flood 2014), the same sequence as orders.py's.
type splitMix64 struct{ state uint64 }

func (r *splitMix64) next() uint64 {
	r.state += 0x9E3779B97F4A7C15
	z := r.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// intn is a number in [0, n) by plain modulo (tiny bias, identical on both sides).
func (r *splitMix64) intn(n int) int { return int(r.next() % uint64(n)) }

func fnv1a64(s string) uint64 {
	h := uint64(0xCBF29CE484222325)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 0x100000001B3
	}
	return h
}

type sku struct {
	SKU        string
	Name       string
	PriceCents int64
}

func buildCatalog() ([]sku, map[string]int) {
	out := make([]sku, 0, numSKUs)
	idx := make(map[string]int, numSKUs)
	for i := 1; i <= numSKUs; i++ {
		r := splitMix64{saltSKU ^ uint64(i)}
		name := adjectives[r.intn(len(adjectives))] + " " + nouns[r.intn(len(nouns))]
		s := sku{fmt.Sprintf("SKU-%04d", i), name, int64(199 + r.intn(19802))}
		idx[s.SKU] = len(out)
		out = append(out, s)
	}
	return out, idx
}

func customer(id string) (name, tier string) {
	r := splitMix64{saltCustomer ^ fnv1a64(id)}
	name = firstNames[r.intn(len(firstNames))] + " " + lastNames[r.intn(len(lastNames))]
	return name, tiers[r.intn(len(tiers))]
}

// ---------------------------------------------------------------------------- faults

var faultNames = []string{"gc_pressure", "goroutine_leak", "item_order", "latency",
	"pprof_on_serving_port", "rounding", "stock_deduction", "stock_write", "timestamp_format"}

// faults are the planted bugs; all off by default.
type faults struct {
	Rounding           bool
	TimestampFormat    bool
	ItemOrder          bool
	StockDeduction     float64 // fraction of POSTs, in [0, 1]
	Latency            time.Duration
	GoroutineLeak      bool
	GCPressure         time.Duration // how long each collection's stop-the-world is held up
	PprofOnServingPort bool
	StockWrite         float64 // fraction of orders whose stock move has the wrong qty
}

// stockDeductionThreshold is out of 10000: an order is faulty when its draw is below it.
func (f faults) stockDeductionThreshold() uint64 {
	return uint64(math.Floor(float64(f.StockDeduction*10000) + 0.5))
}

func parseDuration(name, value string) (time.Duration, error) {
	m := durationRe.FindStringSubmatch(value)
	if m == nil {
		return 0, fmt.Errorf("fault %q: value %q must be a duration like 20ms (units ns, us, ms, s)", name, value)
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]float64{"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[m[2]]
	return time.Duration(n * unit), nil
}

// parseFaults reads name / name=value items, each possibly a comma list.
func parseFaults(specs []string) (faults, error) {
	var f faults
	for _, spec := range specs {
		for _, raw := range strings.Split(spec, ",") {
			item := strings.TrimSpace(raw)
			if item == "" {
				continue
			}
			name, value, hasValue := strings.Cut(item, "=")
			name, value = strings.TrimSpace(name), strings.TrimSpace(value)
			known := false
			for _, k := range faultNames {
				known = known || k == name
			}
			if !known {
				return f, fmt.Errorf("unknown fault %q (known: %s)", name, strings.Join(faultNames, ", "))
			}
			switch name {
			case "stock_deduction", "stock_write":
				v := 0.2
				if hasValue {
					var err error
					v, err = strconv.ParseFloat(value, 64)
					if !fractionRe.MatchString(value) || err != nil || v > 1 {
						return f, fmt.Errorf("fault %q: value %q must be a number between 0 and 1", name, value)
					}
				}
				if name == "stock_write" {
					f.StockWrite = v
				} else {
					f.StockDeduction = v
				}
			case "latency":
				f.Latency = 20 * time.Millisecond
				if hasValue {
					d, err := parseDuration(name, value)
					if err != nil {
						return f, err
					}
					f.Latency = d
				}
			case "gc_pressure":
				f.GCPressure = 20 * time.Millisecond
				if hasValue {
					d, err := parseDuration(name, value)
					if err != nil {
						return f, err
					}
					if d <= 0 || d > gcPressureMax {
						return f, fmt.Errorf("fault %q: value %q must be a duration in (0, %v]", name, value, gcPressureMax)
					}
					f.GCPressure = d
				}
			default:
				if hasValue {
					return f, fmt.Errorf("fault %q takes no value", name)
				}
				switch name {
				case "rounding":
					f.Rounding = true
				case "timestamp_format":
					f.TimestampFormat = true
				case "item_order":
					f.ItemOrder = true
				case "goroutine_leak":
					f.GoroutineLeak = true
				case "pprof_on_serving_port":
					f.PprofOnServingPort = true
				}
			}
		}
	}
	return f, nil
}

// ---------------------------------------------------------------------------- state

type lineItem struct {
	SKU        string
	Name       string
	Qty        int64
	PriceCents int64
	StockAfter *int64
}

type order struct {
	ID            int64
	CustomerID    string
	Status        string
	Currency      string
	Items         []lineItem
	Created       int64
	Updated       int64
	StockDeducted bool
}

// store is one order table and inventory: the real one, or the shadow one.
type store struct {
	stock   map[string]int64
	updated map[string]int64
	orders  map[int64]*order
	counter int64
}

func newStore(catalog []sku) *store {
	s := &store{stock: map[string]int64{}, updated: map[string]int64{}, orders: map[int64]*order{}}
	for _, c := range catalog {
		s.stock[c.SKU] = initialStock
		s.updated[c.SKU] = inventoryTime
	}
	return s
}

type app struct {
	impl    string
	faults  faults
	catalog []sku
	bySKU   map[string]int

	mu     sync.Mutex
	real   *store
	shadow *store
	never  chan struct{} // never closed: what leaked goroutines wait on
	db     orderWriter   // nil: orders are kept in memory only
}

func newApp(f faults) *app {
	catalog, idx := buildCatalog()
	return &app{impl: "go", faults: f, catalog: catalog, bySKU: idx,
		real: newStore(catalog), shadow: newStore(catalog), never: make(chan struct{})}
}

func (a *app) store(shadow bool) *store {
	if shadow {
		return a.shadow
	}
	return a.real
}

// ---------------------------------------------------------------------------- orders

func (a *app) generateOrder(id int64) *order {
	r := splitMix64{saltOrder ^ uint64(id)}
	o := &order{ID: id}
	o.CustomerID = fmt.Sprintf("CUST-%05d", 1+r.intn(99999))
	o.Status = statuses[r.intn(len(statuses))]
	o.Currency = currencies[r.intn(len(currencies))]
	n := 1 + r.intn(5)
	picked := map[int]bool{}
	for len(o.Items) < n {
		idx := r.intn(numSKUs)
		if picked[idx] {
			continue
		}
		picked[idx] = true
		c := a.catalog[idx]
		o.Items = append(o.Items, lineItem{SKU: c.SKU, Name: c.Name, Qty: int64(1 + r.intn(5)), PriceCents: c.PriceCents})
	}
	o.Created = generatedEpoch + int64(r.intn(365*86400))
	o.Updated = o.Created + int64(r.intn(7*86400))
	o.StockDeducted = o.Status == "paid" || o.Status == "shipped" || o.Status == "delivered"
	return o
}

type customerJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Tier string `json:"tier"`
}

type itemJSON struct {
	SKU        string  `json:"sku"`
	Name       string  `json:"name"`
	Qty        int64   `json:"qty"`
	Price      float64 `json:"price"`
	StockAfter *int64  `json:"stock_after,omitempty"`
}

type metaJSON struct {
	ServedBy string `json:"served_by"`
	Version  string `json:"version"`
}

type orderJSON struct {
	ID            int64        `json:"id"`
	Customer      customerJSON `json:"customer"`
	Status        string       `json:"status"`
	Currency      string       `json:"currency"`
	Items         []itemJSON   `json:"items"`
	Subtotal      float64      `json:"subtotal"`
	Tax           float64      `json:"tax"`
	Total         float64      `json:"total"`
	CreatedAt     string       `json:"created_at"`
	UpdatedAt     string       `json:"updated_at"`
	RequestID     string       `json:"request_id"`
	Meta          metaJSON     `json:"meta"`
	StockDeducted bool         `json:"stock_deducted"`
}

type inventoryJSON struct {
	SKU       string  `json:"sku"`
	Stock     int64   `json:"stock"`
	Price     float64 `json:"price"`
	UpdatedAt string  `json:"updated_at"`
}

func (f faults) money(cents int64) float64 {
	v := float64(cents) / 100
	if f.Rounding {
		v = float64(float32(v))
	}
	return v
}

func (f faults) timestamp(ts int64) string {
	t := time.Unix(ts, 0).UTC()
	if f.TimestampFormat {
		return t.Format("2006-01-02T15:04:05.000000-07:00")
	}
	return t.Format("2006-01-02T15:04:05Z")
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (a *app) render(o *order) orderJSON {
	f := a.faults
	name, tier := customer(o.CustomerID)
	items := make([]itemJSON, 0, len(o.Items))
	var subtotal int64
	for _, it := range o.Items {
		items = append(items, itemJSON{it.SKU, it.Name, it.Qty, f.money(it.PriceCents), it.StockAfter})
		subtotal += it.Qty * it.PriceCents
	}
	if f.ItemOrder {
		for i, j := 0, len(items)-1; i < j; i, j = i+1, j-1 {
			items[i], items[j] = items[j], items[i]
		}
	}
	tax := (subtotal*taxBasisPoints + 5000) / 10000
	total := float64(subtotal+tax) / 100
	if f.Rounding { // a drift of 0.001 .. 0.004, always inside a 0.01 tolerance
		total += float64(1+o.ID%4) / 1000
	}
	return orderJSON{
		ID:            o.ID,
		Customer:      customerJSON{o.CustomerID, name, tier},
		Status:        o.Status,
		Currency:      o.Currency,
		Items:         items,
		Subtotal:      f.money(subtotal),
		Tax:           f.money(tax),
		Total:         total,
		CreatedAt:     f.timestamp(o.Created),
		UpdatedAt:     f.timestamp(o.Updated),
		RequestID:     requestID(),
		Meta:          metaJSON{a.impl, version},
		StockDeducted: o.StockDeducted,
	}
}

// ---------------------------------------------------------------------------- HTTP

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error"}`)
	}
	w.Header().Set("Content-Type", contentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{msg})
}

func isShadow(r *http.Request) bool { return strings.TrimSpace(r.Header.Get("X-Gray-Shadow")) == "1" }

// methods answers 405 (with Allow) unless the request's method is one of allowed.
func methods(w http.ResponseWriter, r *http.Request, allowed ...string) bool {
	for _, m := range allowed {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(allowed, ","))
	writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	return false
}

func (a *app) healthz(w http.ResponseWriter, r *http.Request) {
	if methods(w, r, "GET", "HEAD") {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

func (a *app) getOrder(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimPrefix(r.URL.Path, "/api/orders/")
	if raw == "" || strings.Contains(raw, "/") {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	if !methods(w, r, "GET", "HEAD") {
		return
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	if !orderIDRe.MatchString(raw) || err != nil || id < 1 {
		writeError(w, http.StatusNotFound, "order not found")
		return
	}
	a.mu.Lock()
	o := a.store(isShadow(r)).orders[id]
	var out orderJSON
	if o != nil {
		out = a.render(o)
	}
	a.mu.Unlock()
	if o == nil {
		if id >= createdIDBase {
			writeError(w, http.StatusNotFound, "order not found")
			return
		}
		out = a.render(a.generateOrder(id))
	}
	writeJSON(w, http.StatusOK, out)
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

type line struct {
	sku string
	qty int64
}

// validate checks a POST body exactly as orders.py's _validate does, same messages.
func (a *app) validate(body []byte) (string, []line, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var data interface{}
	if err := dec.Decode(&data); err != nil {
		return "", nil, &apiError{400, "invalid JSON body"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", nil, &apiError{400, "invalid JSON body"}
	}
	obj, ok := data.(map[string]interface{})
	if !ok {
		return "", nil, &apiError{400, "body must be a JSON object"}
	}
	cid, ok := obj["customer_id"].(string)
	if !ok || !customerIDRe.MatchString(cid) {
		return "", nil, &apiError{400, errCustomer}
	}
	items, ok := obj["items"].([]interface{})
	if !ok || len(items) < 1 || len(items) > maxItems {
		return "", nil, &apiError{400, errItems}
	}
	lines := make([]line, 0, len(items))
	for i, it := range items {
		m, ok := it.(map[string]interface{})
		if !ok {
			return "", nil, &apiError{400, fmt.Sprintf("items[%d] must be an object", i)}
		}
		s, ok := m["sku"].(string)
		if !ok {
			return "", nil, &apiError{400, fmt.Sprintf("items[%d].sku must be a string", i)}
		}
		num, ok := m["qty"].(json.Number)
		var qty int64
		var err error
		if ok {
			qty, err = strconv.ParseInt(string(num), 10, 64)
		}
		if !ok || err != nil || qty < 1 || qty > maxQty {
			return "", nil, &apiError{400, fmt.Sprintf("items[%d].qty must be an integer between 1 and %d", i, maxQty)}
		}
		lines = append(lines, line{s, qty})
	}
	for _, l := range lines {
		if _, ok := a.bySKU[l.sku]; !ok {
			return "", nil, &apiError{422, "unknown sku: " + l.sku}
		}
	}
	return cid, lines, nil
}

func (a *app) orders(w http.ResponseWriter, r *http.Request) {
	if !methods(w, r, "POST") {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "request body too large")
		} else {
			writeError(w, http.StatusBadRequest, "invalid JSON body")
		}
		return
	}
	cid, lines, err := a.validate(body)
	if err != nil {
		var ae *apiError
		errors.As(err, &ae)
		writeError(w, ae.status, ae.msg)
		return
	}
	status, out, err := a.createOrder(r, cid, lines)
	if err != nil {
		var ae *apiError
		errors.As(err, &ae)
		writeError(w, ae.status, ae.msg)
		return
	}
	writeJSON(w, status, out)
}

func (a *app) createOrder(r *http.Request, cid string, lines []line) (int, orderJSON, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.store(isShadow(r))
	var id int64
	if trace := strings.TrimSpace(r.Header.Get("X-Trace-ID")); trace != "" {
		id = createdIDBase + int64(fnv1a64(trace)%createdIDBase)
	} else {
		st.counter++
		id = counterIDBase + st.counter
	}
	if existing := st.orders[id]; existing != nil { // a replay of the same trace: deduct nothing
		return http.StatusOK, a.render(existing), nil
	}
	fr := splitMix64{saltFault ^ uint64(id)}
	faulty := fr.next()%10000 < a.faults.stockDeductionThreshold()
	remaining := map[string]int64{}
	items := make([]lineItem, 0, len(lines))
	for _, l := range lines {
		left, ok := remaining[l.sku]
		if !ok {
			left = st.stock[l.sku]
		}
		if left < l.qty {
			return 0, orderJSON{}, &apiError{409, "insufficient stock for " + l.sku}
		}
		if faulty { // the planted bug: off by one
			left -= l.qty - 1
		} else {
			left -= l.qty
		}
		remaining[l.sku] = left
		c := a.catalog[a.bySKU[l.sku]]
		after := left
		items = append(items, lineItem{SKU: l.sku, Name: c.Name, Qty: l.qty, PriceCents: c.PriceCents, StockAfter: &after})
	}
	cr := splitMix64{saltCreated ^ uint64(id)}
	created := newOrderEpoch + int64(cr.intn(180*86400))
	for s, left := range remaining {
		st.stock[s] = left
		if created > st.updated[s] {
			st.updated[s] = created
		}
	}
	o := &order{ID: id, CustomerID: cid, Status: "pending", Currency: "USD", Items: items,
		Created: created, Updated: created, StockDeducted: !faulty}
	if trace := strings.TrimSpace(r.Header.Get("X-Trace-ID")); a.db != nil && trace != "" {
		if err := a.db.writeOrder(trace, o, a.stockMoves(o), isShadow(r)); err != nil {
			log.Printf("canary: writing order %d: %v", id, err)
			return 0, orderJSON{}, &apiError{http.StatusServiceUnavailable, "database unavailable"}
		}
	}
	st.orders[id] = o
	return http.StatusCreated, a.render(o), nil
}

// stockMove is one row of stock_moves: qty is the stock change (negative: a deduction).
type stockMove struct {
	SKU    string
	Qty    int64
	Reason string
}

// stockMoves are the rows an order writes; the stock_write fault makes the first one
// deduct one more on a fraction of orders (the answer does not change).
func (a *app) stockMoves(o *order) []stockMove {
	moves := make([]stockMove, 0, len(o.Items))
	for _, it := range o.Items {
		moves = append(moves, stockMove{it.SKU, -it.Qty, "order"})
	}
	wr := splitMix64{saltWrite ^ uint64(o.ID)}
	if a.faults.StockWrite > 0 && len(moves) > 0 &&
		wr.next()%10000 < uint64(math.Floor(a.faults.StockWrite*10000+0.5)) {
		moves[0].Qty--
	}
	return moves
}

// orderWriter writes an order's rows (db_pq.go; without the pq build tag, none).
type orderWriter interface {
	writeOrder(trace string, o *order, moves []stockMove, shadow bool) error
}

func (a *app) inventory(w http.ResponseWriter, r *http.Request) {
	s := strings.TrimPrefix(r.URL.Path, "/api/inventory/")
	if s == "" || strings.Contains(s, "/") {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	if !methods(w, r, "GET", "HEAD") {
		return
	}
	idx, ok := a.bySKU[s]
	if !ok {
		writeError(w, http.StatusNotFound, "unknown sku: "+s)
		return
	}
	c := a.catalog[idx]
	a.mu.Lock()
	st := a.store(isShadow(r) || r.URL.Query().Get("shadow") == "1")
	out := inventoryJSON{s, st.stock[s], a.faults.money(c.PriceCents), a.faults.timestamp(st.updated[s])}
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

func publishVars() {
	publishOnce.Do(func() {
		expvar.Publish("goroutines", expvar.Func(func() interface{} { return runtime.NumGoroutine() }))
	})
}

// handler is the serving mux (never http.DefaultServeMux), wrapped in the per-request faults.
func (a *app) handler() http.Handler {
	publishVars()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", a.healthz)
	mux.HandleFunc("/api/orders", a.orders)
	mux.HandleFunc("/api/orders/", a.getOrder)
	mux.HandleFunc("/api/inventory/", a.inventory)
	mux.Handle("/debug/vars", expvar.Handler())
	if a.faults.PprofOnServingPort {
		mountPprof(mux)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not found")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/debug/") {
			if a.faults.GoroutineLeak {
				go func() { <-a.never }()
			}
			if a.faults.Latency > 0 {
				time.Sleep(a.faults.Latency)
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// debugHandler is for the -debug-listen port only: pprof and expvar.
func debugHandler() http.Handler {
	publishVars()
	mux := http.NewServeMux()
	mountPprof(mux)
	mux.Handle("/debug/vars", expvar.Handler())
	return mux
}

// ---------------------------------------------------------------------------- gc_pressure

const (
	gcPressureEvery = 100 * time.Millisecond // one forced collection this often
	gcPressureMax   = time.Second            // bound on the fault's value
	gcGarbageBytes  = 4 << 20                // short-lived garbage allocated per cycle
	gcGarbageChunk  = 64 << 10
)

var spinSink uint64 // keeps the spin loop's result alive

// spin runs n rounds of a 64-bit LCG. It is marked nosplit (and never inlined), so the Go
// compiler emits no preemption point inside it: while it runs, a stop-the-world waits for
// it, just as it waits for a goroutine stuck in a long non-preemptible call.
//
//go:nosplit
//go:noinline
func spin(n uint64) uint64 {
	x := uint64(1)
	for i := uint64(0); i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

// spinPerMillisecond measures how many rounds of spin take one millisecond here.
func spinPerMillisecond() uint64 {
	const rounds = 2_000_000
	t := time.Now()
	spinSink = spin(rounds)
	ns := time.Since(t).Nanoseconds()
	if ns <= 0 {
		ns = 1
	}
	per := uint64(float64(rounds) * 1e6 / float64(ns))
	if per == 0 {
		per = 1
	}
	return per
}

// gcPressure is the gc_pressure fault: every gcPressureEvery it allocates gcGarbageBytes of
// garbage and forces a collection while another goroutine is in a non-preemptible loop of
// about hold, so that collection's stop-the-world pause (memstats.PauseNs) lasts about
// hold instead of tens of microseconds. It stops when ctx is done.
func gcPressure(ctx context.Context, hold time.Duration) {
	perMs := spinPerMillisecond()
	rounds := uint64(float64(perMs) * float64(hold) / float64(time.Millisecond))
	tick := time.NewTicker(gcPressureEvery)
	defer tick.Stop()
	var garbage [][]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		garbage = garbage[:0]
		for n := 0; n < gcGarbageBytes; n += gcGarbageChunk {
			garbage = append(garbage, make([]byte, gcGarbageChunk))
		}
		running, done := make(chan struct{}), make(chan struct{})
		go func() {
			close(running)
			spinSink = spin(rounds)
			close(done)
		}()
		// The collection starts only once the spinner runs: on a busy machine a fixed sleep
		// can end before the spinner has a P, and the stop-the-world then pauses for
		// microseconds, not for hold (windows that look healthy in a faulty canary).
		<-running
		runtime.GC()
		<-done
	}
}

// ---------------------------------------------------------------------------- main

type faultFlags []string

func (f *faultFlags) String() string     { return strings.Join(*f, ",") }
func (f *faultFlags) Set(v string) error { *f = append(*f, v); return nil }

func serve(addr string, h http.Handler, label string, out io.Writer) (*http.Server, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(out, "%slistening on http://%s\n", label, ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	return srv, done, nil
}

func run(ctx context.Context, listen, debugListen string, f faults, db orderWriter, out io.Writer) error {
	servers := []*http.Server{}
	var debugDone <-chan error
	if debugListen != "" {
		dsrv, d, err := serve(debugListen, debugHandler(), "debug ", out)
		if err != nil {
			return err
		}
		servers, debugDone = append(servers, dsrv), d
	}
	a := newApp(f)
	a.db = db
	srv, done, err := serve(listen, a.handler(), "", out)
	if err != nil {
		return err
	}
	if f.GCPressure > 0 {
		gctx, stopGC := context.WithCancel(ctx)
		defer stopGC()
		go gcPressure(gctx, f.GCPressure)
	}
	servers = append(servers, srv)
	select {
	case <-ctx.Done():
	case err = <-done:
	case err = <-debugDone:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func main() {
	defaultListen := "127.0.0.1:8082"
	if v := os.Getenv("LISTEN"); v != "" {
		defaultListen = v
	}
	listen := flag.String("listen", defaultListen, "host:port to serve on (env LISTEN; port 0 picks one)")
	debugListen := flag.String("debug-listen", "", "host:port for pprof and expvar (default off)")
	var ff faultFlags
	flag.Var(&ff, "fault", "plant a fault, name or name=value (repeatable; also env ORDERS_FAULTS): "+
		strings.Join(faultNames, ", "))
	database := flag.String("database", os.Getenv("ORDERS_DATABASE_URL"),
		"write orders and stock moves to this PostgreSQL (env ORDERS_DATABASE_URL)")
	schema := flag.String("db-schema", envOr("ORDERS_DB_SCHEMA", "orders_demo"),
		"the schema of its tables (env ORDERS_DB_SCHEMA)")
	flag.Parse()
	specs := append([]string{os.Getenv("ORDERS_FAULTS")}, ff...)
	f, err := parseFaults(specs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "canary: %v\n", err)
		os.Exit(2)
	}
	var db orderWriter
	if *database != "" {
		if !schemaRe.MatchString(*schema) {
			fmt.Fprintf(os.Stderr, "canary: -db-schema: %q is not a lower-case SQL identifier\n", *schema)
			os.Exit(2)
		}
		if db, err = openDB(*database, *schema); err != nil {
			fmt.Fprintf(os.Stderr, "canary: database: %v\n", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *debugListen, f, db, os.Stdout); err != nil {
		log.Printf("canary: %v", err)
		os.Exit(1)
	}
}

var schemaRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
