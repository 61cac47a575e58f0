// Package httpserve runs an HTTP server on a listener until its context ends, then shuts it down gracefully:
// the one way cniplug serves its plugin socket and its metrics listener.
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Bounds on a client. Docker sends each request at once, a few KiB, and keeps its connection for the next
// ones; a client that sends slower than this is cut off rather than holding a connection and a goroutine.
// There is no write timeout: a handler may run as long as its CNI ADD or DEL (--cni-timeout, which has no
// upper bound), and the net/http server clears the read deadline once the body is read, so a long request
// is not cut off either.
const (
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, headers and body.
	ReadTimeout = 30 * time.Second
	// IdleTimeout bounds how long a kept-alive connection waits for its next request.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes bounds a request's headers; Docker's are a few hundred bytes.
	MaxHeaderBytes = 64 << 10
)

// timeouts are a server's bounds on its clients.
type timeouts struct{ readHeader, read, idle time.Duration }

// Serve serves h on l until ctx is cancelled, then gives in-flight requests up to grace to finish.
func Serve(ctx context.Context, l net.Listener, h http.Handler, grace time.Duration) error {
	return serve(ctx, l, h, grace, timeouts{readHeader: ReadHeaderTimeout, read: ReadTimeout, idle: IdleTimeout})
}

func serve(ctx context.Context, l net.Listener, h http.Handler, grace time.Duration, t timeouts) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: t.readHeader, ReadTimeout: t.read, IdleTimeout: t.idle,
		MaxHeaderBytes: MaxHeaderBytes}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(l) }()
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}
}
