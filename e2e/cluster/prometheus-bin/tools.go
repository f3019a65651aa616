//go:build tools

// Package tools pins the Prometheus server in this wrapper module's go.mod.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
