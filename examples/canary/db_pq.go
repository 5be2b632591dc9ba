//go:build pq

// The canary's writes to PostgreSQL, through lib/pq (Debian: golang-github-lib-pq-dev,
// built offline in GOPATH mode with -tags pq; graygate/demo.py build_go_canary does it).
// The same tables as examples/orders.py: orders and stock_moves, shadow_orders and
// shadow_stock_moves for a request with X-Gray-Shadow: 1, each row with the request's
// X-Trace-ID in trace_id.

package main

import (
	"database/sql"
	"fmt"
	"net/url"
	"strings"

	_ "github.com/lib/pq"
)

const dbLockKey = 0x6F7264657273 // advisory lock: one service creates the tables at a time

type pqWriter struct {
	db     *sql.DB
	schema string
}

// openDB connects (postgresql://, postgres:// or postgresql+asyncpg:// URLs; sslmode
// disable unless the URL says otherwise) and creates the schema and tables when missing.
func openDB(raw, schema string) (orderWriter, error) {
	u, err := url.Parse(strings.Replace(raw, "postgresql+asyncpg://", "postgresql://", 1))
	if err != nil {
		return nil, fmt.Errorf("not a URL: %v", err)
	}
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
		u.RawQuery = q.Encode()
	}
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(8)
	tx, err := db.Begin()
	if err != nil {
		db.Close()
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.Exec("SELECT pg_advisory_xact_lock($1)", dbLockKey); err != nil {
		db.Close()
		return nil, err
	}
	for _, stmt := range schemaDDL(schema) {
		if _, err := tx.Exec(stmt); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		db.Close()
		return nil, err
	}
	return &pqWriter{db, schema}, nil
}

func schemaDDL(schema string) []string {
	out := []string{"CREATE SCHEMA IF NOT EXISTS " + schema}
	for _, p := range []string{"", "shadow_"} {
		out = append(out,
			"CREATE TABLE IF NOT EXISTS "+schema+"."+p+"orders (id bigserial PRIMARY KEY, "+
				"trace_id text NOT NULL, order_id bigint NOT NULL, customer_id text NOT NULL, "+
				"total_cents bigint NOT NULL, items integer NOT NULL, "+
				"created_at timestamptz NOT NULL DEFAULT now())",
			"CREATE INDEX IF NOT EXISTS "+p+"orders_trace_id ON "+schema+"."+p+"orders (trace_id)",
			"CREATE TABLE IF NOT EXISTS "+schema+"."+p+"stock_moves (id bigserial PRIMARY "+
				"KEY, trace_id text NOT NULL, order_id bigint NOT NULL, sku text NOT NULL, "+
				"qty integer NOT NULL, reason text NOT NULL, "+
				"created_at timestamptz NOT NULL DEFAULT now())",
			"CREATE INDEX IF NOT EXISTS "+p+"stock_moves_trace_id ON "+schema+"."+p+"stock_moves (trace_id)",
		)
	}
	return out
}

func (w *pqWriter) writeOrder(trace string, o *order, moves []stockMove, shadow bool) error {
	prefix := ""
	if shadow {
		prefix = "shadow_"
	}
	var total int64
	for _, it := range o.Items {
		total += it.Qty * it.PriceCents
	}
	tx, err := w.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck
	if _, err := tx.Exec("INSERT INTO "+w.schema+"."+prefix+"orders (trace_id, order_id, "+
		"customer_id, total_cents, items) VALUES ($1, $2, $3, $4, $5)",
		trace, o.ID, o.CustomerID, total, len(o.Items)); err != nil {
		return err
	}
	for _, m := range moves {
		if _, err := tx.Exec("INSERT INTO "+w.schema+"."+prefix+"stock_moves (trace_id, "+
			"order_id, sku, qty, reason) VALUES ($1, $2, $3, $4, $5)",
			trace, o.ID, m.SKU, m.Qty, m.Reason); err != nil {
			return err
		}
	}
	return tx.Commit()
}
