//! A client connection that sends a unary call's HEADERS and DATA frames in one write.
//!
//! hyper's HTTP/2 client queues a request's HEADERS, and only once the connection task has sent them (the stream is
//! "pending open" until then) does h2 give the body send capacity, so the DATA frame follows in a second write.
//! Each call then costs the caller two `writev`s and, often, the server two wake-ups: it reads the HEADERS alone,
//! starts the handler, goes back to epoll, and wakes again for the DATA. Per Recommend the gateway makes about ten
//! such calls.
//!
//! [`Coalescing`] puts a flush off once: the first `poll_flush` after new bytes wakes its own task and answers
//! `Pending`. The body task that h2 woke in the same poll runs first (a task that wakes itself is rescheduled
//! behind the ones it woke, on both of tokio's schedulers), queues the DATA frame, and the connection's next flush
//! writes HEADERS and DATA together. If nothing else arrives, the next flush writes what is there: a put-off costs
//! one more poll of the connection task, never a timer. No crate does this (tokio's `BufWriter` writes on every
//! flush), hence this wrapper.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Writes up to this many bytes are copied and held for the next flush; a larger one goes straight to the socket
/// (after what is held), so a bulk message is not copied once more.
const HOLD_LIMIT: usize = 16 * 1024;

/// An I/O stream whose flushes are put off once so that frames queued together leave in one write.
#[derive(Debug)]
pub struct Coalescing<T> {
    inner: T,
    held: Vec<u8>,
    /// Bytes not yet written from the front of `held`.
    start: usize,
    /// A flush has already been put off for what `held` has now.
    put_off: bool,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            start: 0,
            put_off: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn pending(&self) -> usize {
        self.held.len() - self.start
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes what is held; Ready(Ok) once all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.held.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.held[self.start..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.start += n;
        }
        self.held.clear();
        self.start = 0;
        self.put_off = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending() + data.len() <= HOLD_LIMIT {
            this.held.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        // Too much to hold: what is held goes first, then this write itself.
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending() + total <= HOLD_LIMIT {
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Small slices are copied together anyway; large ones go to the socket as they are.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending() > 0 && !this.put_off {
            this.put_off = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Opens a TCP connection (no Nagle delay) to the host and port of `uri`, or `default_port` when it names none.
pub(crate) async fn connect_tcp(
    uri: &http::Uri,
    default_port: u16,
) -> io::Result<(String, TcpStream)> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the address"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(default_port))).await?;
    tcp.set_nodelay(true)?;
    Ok((host, tcp))
}

/// Opens plain TCP connections for a tonic channel, each behind [`Coalescing`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl tower::Service<http::Uri> for TcpConnector {
    type Response = hyper_util::rt::TokioIo<Coalescing<TcpStream>>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let (_, tcp) = connect_tcp(&uri, 80).await?;
            Ok(hyper_util::rt::TokioIo::new(Coalescing::new(tcp)))
        })
    }
}

/// Opens Unix-socket connections to one path for a tonic channel (`unix:PATH` addresses), each behind
/// [`Coalescing`]. The channel's URI only names the HTTP/2 authority; the path is where it connects.
#[cfg(unix)]
#[derive(Clone, Debug)]
pub struct UnixConnector(pub std::sync::Arc<std::path::Path>);

#[cfg(unix)]
impl tower::Service<http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<Coalescing<tokio::net::UnixStream>>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let unix = tokio::net::UnixStream::connect(&*path).await?;
            Ok(hyper_util::rt::TokioIo::new(Coalescing::new(unix)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records each write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_flush(io: &mut Coalescing<Recorder>) -> Poll<io::Result<()>> {
        let waker = futures::task::noop_waker();
        Pin::new(io).poll_flush(&mut Context::from_waker(&waker))
    }

    fn write(io: &mut Coalescing<Recorder>, data: &[u8]) {
        let waker = futures::task::noop_waker();
        let n = Pin::new(io).poll_write(&mut Context::from_waker(&waker), data);
        assert!(matches!(n, Poll::Ready(Ok(k)) if k == data.len()));
    }

    #[test]
    fn frames_written_before_the_second_flush_leave_in_one_write() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        write(&mut io, b"headers");
        assert!(
            poll_flush(&mut io).is_pending(),
            "the first flush is put off"
        );
        assert!(rec.0.lock().unwrap().is_empty());
        write(&mut io, b"data");
        assert!(matches!(poll_flush(&mut io), Poll::Ready(Ok(()))));
        assert_eq!(*rec.0.lock().unwrap(), vec![b"headersdata".to_vec()]);
        // Nothing held: a flush is immediate; new bytes are put off once again.
        assert!(matches!(poll_flush(&mut io), Poll::Ready(Ok(()))));
        write(&mut io, b"next");
        assert!(poll_flush(&mut io).is_pending());
        assert!(matches!(poll_flush(&mut io), Poll::Ready(Ok(()))));
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_large_write_goes_straight_through_after_what_is_held() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        write(&mut io, b"head");
        let big = vec![7u8; HOLD_LIMIT + 1];
        write(&mut io, &big);
        let writes = rec.0.lock().unwrap().clone();
        assert_eq!(writes, vec![b"head".to_vec(), big]);
        assert!(matches!(poll_flush(&mut io), Poll::Ready(Ok(()))));
    }

    /// Counts the writes that reach the stream it wraps.
    struct Counted<T> {
        inner: T,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let out = Pin::new(&mut self.inner).poll_write(cx, data);
            if let Poll::Ready(Ok(_)) = out {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            out
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Hands a channel the one connection it was made with.
    #[derive(Clone)]
    struct Given<T>(Arc<Mutex<Option<T>>>);

    impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> tower::Service<http::Uri> for Given<T> {
        type Response = hyper_util::rt::TokioIo<T>;
        type Error = io::Error;
        type Future = std::future::Ready<io::Result<Self::Response>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Uri) -> Self::Future {
            std::future::ready(
                self.0
                    .lock()
                    .unwrap()
                    .take()
                    .map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| io::Error::other("connected once already")),
            )
        }
    }

    /// Writes the client makes per unary call (health checks against a tonic server), over an in-memory pipe.
    async fn writes_per_call(coalesce: bool) -> f64 {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(futures::stream::iter([Ok::<_, io::Error>(server_io)])),
        );
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let io = Counted {
            inner: client_io,
            writes: writes.clone(),
        };
        let endpoint = tonic::transport::Endpoint::from_static("http://in-memory");
        let channel = if coalesce {
            endpoint
                .connect_with_connector(Given(Arc::new(Mutex::new(Some(Coalescing::new(io))))))
                .await
        } else {
            endpoint
                .connect_with_connector(Given(Arc::new(Mutex::new(Some(io)))))
                .await
        }
        .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let check = || tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        // The connection preface and settings exchange come first.
        for _ in 0..3 {
            client.check(check()).await.unwrap();
        }
        writes.store(0, std::sync::atomic::Ordering::Relaxed);
        const CALLS: usize = 20;
        for _ in 0..CALLS {
            client.check(check()).await.unwrap();
        }
        server.abort();
        writes.load(std::sync::atomic::Ordering::Relaxed) as f64 / CALLS as f64
    }

    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write_instead_of_two() {
        // hyper sends a request's HEADERS and then its DATA in separate writes; behind `Coalescing`, one write.
        assert_eq!(writes_per_call(false).await, 2.0);
        assert_eq!(writes_per_call(true).await, 1.0);
    }
}
