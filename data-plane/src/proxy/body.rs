//! What every part of the traffic path passes around: a boxed HTTP body
//! and a byte stream, plaintext or TLS. A leaf: it depends on no other
//! module of the proxy.

use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of `bytes`, all at once (empty: the stream ends with the headers).
pub fn full(bytes: Bytes) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed()
}

/// A byte stream, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type Stream = Pin<Box<dyn Io>>;
