package binarycache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ErrNotFound is wrapped by errors for a file the substituter does not have (HTTP 404,
// 410, or 403 as S3 answers for a missing key and Nix reads it, or a missing file://
// file): the next substituter is tried, without retries.
var ErrNotFound = errors.New("not found")

var errStalled = errors.New("stalled")

// statusError is an HTTP response other than 200.
type statusError struct{ code int }

func (e *statusError) Error() string {
	return fmt.Sprintf("HTTP %d %s", e.code, http.StatusText(e.code))
}

func (e *statusError) Unwrap() error {
	switch e.code {
	case http.StatusNotFound, http.StatusGone, http.StatusForbidden:
		return ErrNotFound
	}
	return nil
}

// transient reports whether another attempt may succeed.
func transient(err error) bool {
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return se.code >= 500 || se.code == http.StatusTooManyRequests || se.code == http.StatusRequestTimeout
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false // the caller's context: stop at once
	case errors.Is(err, errStalled), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return true
	}
	return false
}

// resolve checks that rel names a file under the substituter (no "..", no absolute URL,
// no query) and returns its URL or file:// path.
func (s *substituter) resolve(rel string) (string, error) {
	if rel == "" || strings.HasPrefix(rel, "/") || strings.ContainsAny(rel, "?#\\\x00") ||
		strings.Contains(rel, "://") || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("refusing cache file name %q: not a plain relative path", rel)
	}
	if s.dir != "" {
		return filepath.Join(s.dir, filepath.FromSlash(rel)), nil
	}
	u := *s.base
	u.Path = s.base.Path + "/" + rel
	return u.String(), nil
}

func (s *substituter) display(rel string) string {
	u := *s.base
	u.Path = s.base.Path + "/" + rel
	return u.Redacted()
}

// openOnce makes one attempt at rel. The body stalls out after c.stall without bytes.
func (c *Client) openOnce(ctx context.Context, s *substituter, rel string) (io.ReadCloser, error) {
	loc, err := s.resolve(rel)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.dir != "" {
		f, err := os.Open(loc)
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			f.Close()
			return nil, errors.New("not a regular file")
		}
		return &ctxReader{ctx: ctx, r: f}, nil
	}
	actx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(actx, http.MethodGet, loc, nil)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	// Stall watchdog over the whole attempt: headers are covered by the transport's own
	// timeouts, the body by this timer, reset by every read that makes progress.
	timer := time.AfterFunc(c.stall, func() { cancel(errStalled) })
	resp, err := c.http.Do(req)
	if err != nil {
		timer.Stop()
		cancel(nil)
		if context.Cause(actx) == errStalled {
			return nil, errStalled
		}
		return nil, unwrapURLError(err)
	}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.CopyN(io.Discard, resp.Body, 4096)
		resp.Body.Close()
		timer.Stop()
		cancel(nil)
		return nil, &statusError{resp.StatusCode}
	}
	return &stallReader{body: resp.Body, timer: timer, stall: c.stall, ctx: actx, cancel: cancel}, nil
}

// unwrapURLError drops *url.Error's `Get "URL":` prefix: callers name the URL, redacted.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

type stallReader struct {
	body   io.ReadCloser
	timer  *time.Timer
	stall  time.Duration
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (r *stallReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if n > 0 {
		r.timer.Reset(r.stall)
	}
	if err != nil && err != io.EOF {
		if context.Cause(r.ctx) == errStalled {
			err = fmt.Errorf("%w: no data for %s", errStalled, r.stall)
		}
	}
	return n, err
}

func (r *stallReader) Close() error {
	r.timer.Stop()
	err := r.body.Close()
	r.cancel(nil)
	return err
}

// ctxReader makes file reads stop when ctx is done, as HTTP bodies do.
type ctxReader struct {
	ctx context.Context
	r   io.ReadCloser
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *ctxReader) Close() error { return r.r.Close() }

// withRetries runs attempt until it succeeds, fails for good, or the retries are spent;
// the error names what and the number of attempts.
func (c *Client) withRetries(ctx context.Context, what string, attempt func() error) error {
	delay := c.backoff
	for n := 1; ; n++ {
		err := attempt()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
		if !transient(err) || n > c.retries {
			if n > 1 {
				return fmt.Errorf("%s: %w (after %d attempts)", what, err, n)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		c.logf("%s: %v; retrying in %s", what, err, delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-t.C:
		}
		delay = min(delay*2, maxBackoff)
	}
}

// readSmall fetches rel from s, at most limit bytes, with retries.
func (c *Client) readSmall(ctx context.Context, s *substituter, rel string, limit int64) ([]byte, error) {
	var data []byte
	err := c.withRetries(ctx, "GET "+s.display(rel), func() error {
		body, err := c.openOnce(ctx, s, rel)
		if err != nil {
			return err
		}
		defer body.Close()
		data, err = io.ReadAll(io.LimitReader(body, limit+1))
		if err != nil {
			return err
		}
		if int64(len(data)) > limit {
			return fmt.Errorf("larger than %d bytes", limit)
		}
		return nil
	})
	return data, err
}
