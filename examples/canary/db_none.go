//go:build !pq

package main

import "errors"

// openDB without the pq build tag: this binary cannot write to PostgreSQL.
func openDB(raw, schema string) (orderWriter, error) {
	return nil, errors.New("this canary was built without PostgreSQL support (go build -tags pq, " +
		"with github.com/lib/pq in GOPATH: Debian's golang-github-lib-pq-dev)")
}
