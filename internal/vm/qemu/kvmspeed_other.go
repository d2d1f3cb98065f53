//go:build !amd64

package qemu

import "time"

// KVMSpeed is measured on amd64 only; elsewhere the guest's boot decides.
func KVMSpeed(limit time.Duration) (time.Duration, error) { return 0, nil }
