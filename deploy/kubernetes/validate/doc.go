// Package validate holds the offline validation of egressd's Kubernetes
// manifests (validate_test.go). It is its own Go module so that the main
// module gets no Kubernetes dependency.
package validate
