// Why this exists: every pod sandbox needs a "pause" container (it holds the pod's namespaces),
// and our machines reach no container registry, so the upstream registry.k8s.io/pause image cannot
// be pulled. This is a minimal replacement: it sleeps until SIGTERM/SIGINT (then exits 0) and,
// as PID 1 of a pod that shares its PID namespace, reaps orphaned children. Built static by
// e2e/cluster/build.sh and packed FROM scratch as localhost/paretoserve/pause:3.10 (containerd's
// sandbox_image, see e2e/cluster/engine.sh).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "paretoserve-pause 3.10"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "shutting down, got signal %v\n", sig)
			os.Exit(0)
		}
		// Reap every child that has exited; SIGCHLDs coalesce, so loop until none is left.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
