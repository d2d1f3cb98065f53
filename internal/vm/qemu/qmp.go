package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

const (
	qmpDialTimeout = time.Second
	qmpRetry       = 20 * time.Millisecond
	// qmpHandshake bounds the QMP greeting and capabilities exchange once
	// the socket accepted: QEMU answers in milliseconds unless it is stuck.
	qmpHandshake = 30 * time.Second
	// pumpDrain bounds the wait, once QEMU has exited, for go-qemu's reader
	// to hand over the events still buffered in the socket.
	pumpDrain = 2 * time.Second
)

// connect dials the QMP socket until QEMU has created it, then does the
// handshake and starts the event pump.
func (v *vm) connect(ctx context.Context) error {
	var mon *qmp.SocketMonitor
	for {
		var err error
		mon, err = qmp.NewSocketMonitor("unix", v.qmpSock, qmpDialTimeout)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.exited:
			return errors.New("exited before its QMP socket was ready")
		case <-time.After(qmpRetry):
		}
	}
	// go-qemu's handshake has no deadline: on failure we close our end,
	// which ends it whatever state QEMU is in.
	hs := make(chan error, 1)
	go func() { hs <- mon.Connect() }()
	timer := time.NewTimer(qmpHandshake)
	defer timer.Stop()
	var err error
	finished := false // whether hs has been received from
	select {
	case err = <-hs:
		finished = true
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = errors.New("QMP handshake timed out")
	case <-v.exited:
		err = errors.New("exited during the QMP handshake")
	}
	if err != nil { // Start decides whether QEMU must be killed
		if !finished {
			select {
			case <-hs:
			default:
				mon.Disconnect() // closing our end ends the blocked handshake
				<-hs
			}
		}
		mon.Disconnect()
		if errors.Is(err, io.EOF) {
			err = errors.New("exited during the QMP handshake")
		}
		return fmt.Errorf("QMP: %w", err)
	}
	// Events right away: go-qemu drops events until someone listens.
	src, err := mon.Events(context.Background())
	if err != nil {
		mon.Disconnect()
		return fmt.Errorf("QMP events: %w", err)
	}
	v.mon = mon
	v.pumped = make(chan struct{})
	go v.pumpEvents(src)
	return nil
}

// pumpEvents drains go-qemu's unbuffered channel, which otherwise blocks
// its reader and with it every QMP command.
func (v *vm) pumpEvents(src <-chan qmp.Event) {
	defer close(v.pumped)
	defer close(v.events)
	for e := range src {
		ev := Event{
			Name: e.Event,
			Data: e.Data,
			Time: time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000),
		}
		if ev.Name == "SHUTDOWN" {
			r, _ := ev.Data["reason"].(string)
			v.mu.Lock()
			v.reason = r
			v.mu.Unlock()
		}
		for {
			select {
			case v.events <- ev:
			default:
				select { // full: drop the oldest and retry
				case <-v.events:
				default:
				}
				continue
			}
			break
		}
	}
}

// run executes one QMP command, bounded by ctx and by QEMU's life: go-qemu's
// Run has no timeout of its own.
func (v *vm) run(ctx context.Context, cmd string, args any) ([]byte, error) {
	if v.mon == nil {
		return nil, errors.New("QMP not connected")
	}
	b, err := json.Marshal(qmp.Command{Execute: cmd, Args: args})
	if err != nil {
		return nil, err
	}
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		out, err := v.mon.Run(b)
		ch <- result{out, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, r.err)
		}
		return r.out, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("QMP %s: %w", cmd, ctx.Err())
	case <-v.exited:
		return nil, fmt.Errorf("QMP %s: QEMU exited", cmd)
	}
}
