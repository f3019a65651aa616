// Why this exists: the real node's health check (e2e/cluster/node/health.sh) needs a container
// that serves HTTP and can make requests and DNS lookups from inside the pod network, and there
// is no registry to pull busybox from. This static program, packed FROM scratch as
// localhost/paretoserve/e2e-probe, is that container. Subcommands:
//
//	probe [serve [ADDR]]    HTTP server (default :8080): "/" answers "ok <hostname>", "/healthz" "ok"
//	probe get URL           GET URL (5 s timeout), print the status line and body; exit 1 unless 2xx
//	probe resolve NAME...   resolve each NAME with the pod's /etc/resolv.conf; exit 1 on a failure
//	probe apiserver [URL]   GET URL (default https://kubernetes.default.svc/version) with the pod's
//	                        ServiceAccount token and CA, i.e. in-cluster config; exit 1 unless 2xx
//	probe cat FILE...       print files (e.g. the container's own cgroup files)
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "probe: "+format+"\n", args...)
	os.Exit(1)
}

func get(client *http.Client, url, token string) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		die("%v", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		die("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	fmt.Printf("%s\n%s\n", resp.Status, strings.TrimSpace(string(body)))
	if resp.StatusCode/100 != 2 {
		os.Exit(1)
	}
}

func main() {
	cmd, args := "serve", []string{} // the image's entrypoint is just /probe
	if len(os.Args) > 1 {
		cmd, args = os.Args[1], os.Args[2:]
	}
	switch cmd {
	case "serve":
		addr := ":8080"
		if len(args) > 0 {
			addr = args[0]
		}
		host, _ := os.Hostname()
		http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "ok %s\n", host) })
		fmt.Fprintf(os.Stderr, "serving on %s\n", addr)
		die("%v", http.ListenAndServe(addr, nil))
	case "get":
		if len(args) != 1 {
			die("usage: probe get URL")
		}
		get(&http.Client{Timeout: 5 * time.Second}, args[0], "")
	case "resolve":
		if len(args) == 0 {
			die("usage: probe resolve NAME...")
		}
		failed := false
		for _, name := range args {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			cancel()
			if err != nil {
				fmt.Printf("%s: ERROR %v\n", name, err)
				failed = true
				continue
			}
			fmt.Printf("%s: %s\n", name, strings.Join(addrs, " "))
		}
		if failed {
			os.Exit(1)
		}
	case "apiserver":
		url := "https://kubernetes.default.svc/version"
		if len(args) > 0 {
			url = args[0]
		}
		token, err := os.ReadFile(saDir + "/token")
		if err != nil {
			die("%v", err)
		}
		ca, err := os.ReadFile(saDir + "/ca.crt")
		if err != nil {
			die("%v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			die("no certificate in %s/ca.crt", saDir)
		}
		client := &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		}
		get(client, url, strings.TrimSpace(string(token)))
	case "cat":
		for _, f := range args {
			b, err := os.ReadFile(f)
			if err != nil {
				die("%v", err)
			}
			fmt.Printf("%s: %s\n", f, strings.TrimSpace(string(b)))
		}
	default:
		die("unknown subcommand %q (serve|get|resolve|apiserver|cat)", cmd)
	}
}
