//! Connections that do nothing are closed: an HTTP connection with no
//! request in flight for the idle timeout, a TCP connection with no byte
//! either way for its idle timeout, and an HTTP/1.x connection whose
//! request head is still incomplete after the request headers timeout (a
//! slow-loris client holds a connection and a buffer forever otherwise).
//! The clocks are per connection and cost a clock read per request; no
//! timer is armed on the request path unless a head arrives in pieces.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::Proxy;
use super::body::Stream;
use super::clock::now;
use super::downstream::{Activity, Downstream};
use crate::metrics::traffic::TimeoutLabels;

/// A request of `down` in flight while this lives.
pub struct Busy(Arc<Downstream>);

impl Busy {
    pub fn new(down: Arc<Downstream>) -> Self {
        down.activity.begin();
        Busy(down)
    }

    pub fn down(&self) -> &Arc<Downstream> {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

/// Resolves once `activity` has been idle for `timeout` (never if None).
pub async fn idle(activity: &Activity, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let now = now();
        let deadline = match activity.idle_since() {
            Some(since) if now.saturating_duration_since(since) >= timeout => return,
            Some(since) => since + timeout,
            // Busy: nothing can expire before a full timeout from now.
            None => now + timeout,
        };
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Counts a connection closed by one of its timeouts.
pub fn count(proxy: &Proxy, listener: &str, timeout: &'static str) {
    proxy
        .metrics()
        .timeouts
        .get_or_create(&TimeoutLabels {
            listener: listener.to_owned(),
            timeout,
        })
        .inc();
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A downstream HTTP connection whose reads fail once a request head has
/// been arriving for longer than the request headers timeout (HTTP/1.x
/// only: an HTTP/2 connection, told by its preface, has no such heads; its
/// idle PINGs and SETTINGS must not count as one).
pub struct HeadTimer {
    inner: Stream,
    timeout: Option<Duration>,
    proxy: Arc<Proxy>,
    down: Arc<Downstream>,
    /// How much of the HTTP/2 preface the first bytes have matched.
    preface: usize,
    /// When the current head's first byte came, and the request count then.
    head: Option<(Instant, u64)>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HeadTimer {
    pub fn new(
        inner: Stream,
        timeout: Option<Duration>,
        proxy: Arc<Proxy>,
        down: Arc<Downstream>,
    ) -> Self {
        HeadTimer {
            inner,
            timeout,
            proxy,
            down,
            preface: 0,
            head: None,
            sleep: None,
        }
    }

    /// Bytes arrived: HTTP/2 turns the timer off; with no request in
    /// flight they start a head (if one has not started since the last
    /// request began).
    fn arrived(&mut self, bytes: &[u8]) {
        if self.preface < H2_PREFACE.len() {
            let want = &H2_PREFACE[self.preface..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                self.preface += n;
                if self.preface == H2_PREFACE.len() {
                    self.timeout = None;
                    return;
                }
            } else {
                // Not HTTP/2: never look again.
                self.preface = usize::MAX;
            }
        }
        let activity = &self.down.activity;
        let started = activity.started.load(Ordering::Relaxed);
        if activity.active.load(Ordering::Relaxed) > 0 {
            self.head = None;
        } else if self.head.is_none_or(|(_, at)| at != started) {
            self.head = Some((now(), started));
        }
    }

    /// Waiting for more bytes: is the head still incomplete past its time?
    fn expired(&mut self, timeout: Duration, cx: &mut Context<'_>) -> bool {
        let Some((since, at)) = self.head else {
            return false;
        };
        let activity = &self.down.activity;
        if activity.started.load(Ordering::Relaxed) != at
            || activity.active.load(Ordering::Relaxed) > 0
        {
            return false;
        }
        let deadline = (since + timeout).into();
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for HeadTimer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(timeout) = self.timeout else {
            return self.inner.as_mut().poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.arrived(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(timeout, cx) => {
                // The connection ends here (hyper takes a read error as
                // fatal), so this counts once.
                self.timeout = None;
                count(&self.proxy, &self.down.listener, "request_headers");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request headers not complete within {timeout:?}"),
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadTimer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// How long `idle` took on the paused clock (which jumps to the next
    /// timer, rounded up to tokio's millisecond).
    async fn waited(activity: &Activity, timeout: Option<Duration>) -> Duration {
        let started = tokio::time::Instant::now();
        idle(activity, timeout).await;
        started.elapsed()
    }

    fn about(d: Duration, expected: Duration) -> bool {
        d >= expected && d < expected + Duration::from_millis(5)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_times_out_only_after_a_whole_idle_timeout() {
        let activity = Activity::default();
        let d = waited(&activity, Some(TIMEOUT)).await;
        assert!(about(d, TIMEOUT), "{d:?}");

        // A request in flight (its body included) is never idle, however long.
        activity.begin();
        let busy = tokio::time::timeout(10 * TIMEOUT, idle(&activity, Some(TIMEOUT))).await;
        assert!(busy.is_err(), "timed out with a request in flight");
        // When it ends, a whole timeout starts from then.
        activity.end();
        let d = waited(&activity, Some(TIMEOUT)).await;
        assert!(about(d, TIMEOUT), "{d:?}");

        // Bytes moving (TCP) push the deadline on: a byte every 40 s keeps
        // a 60 s timeout from firing; silence then closes after 60 s.
        activity.touch();
        let timer = idle(&activity, Some(TIMEOUT));
        tokio::pin!(timer);
        for _ in 0..5 {
            tokio::select! {
                _ = &mut timer => panic!("timed out although bytes kept moving"),
                _ = tokio::time::sleep(Duration::from_secs(40)) => activity.touch(),
            }
        }
        let last = tokio::time::Instant::now();
        timer.await;
        assert!(about(last.elapsed(), TIMEOUT), "{:?}", last.elapsed());

        // No timeout: never.
        let never = tokio::time::timeout(Duration::from_secs(86_400), idle(&activity, None)).await;
        assert!(never.is_err());
    }
}
