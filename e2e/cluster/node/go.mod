// The real node's two tiny images (e2e/cluster/node/pause, e2e/cluster/node/probe): static Go
// programs, standard library only, built by e2e/cluster/build.sh and packed FROM scratch.
module paretoserve.local/e2e/node

go 1.26.0
