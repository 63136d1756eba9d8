//! Telling a connection's protocol from its first bytes, without consuming
//! them: a TLS handshake record, the HTTP/2 prior-knowledge preface, an
//! HTTP/1.x request line, or anything else (opaque TCP). Used where the
//! control plane leaves the protocol open (a port declared `auto`).

use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Tls,
    Http1,
    Http2,
    Opaque,
}

impl Detected {
    /// The application protocol name Envoy's HTTP inspector gives this
    /// connection (matched against `application_protocols`).
    pub fn application_protocol(self) -> Option<&'static str> {
        match self {
            Detected::Http1 => Some("http/1.1"),
            Detected::Http2 => Some("h2c"),
            Detected::Tls | Detected::Opaque => None,
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
/// A request line longer than this is not taken as HTTP.
const MAX_REQUEST_LINE: usize = 4096;

/// What the bytes seen so far say, or `None` if they could still be more
/// than one thing.
pub fn classify(seen: &[u8]) -> Option<Detected> {
    if seen.is_empty() {
        return None;
    }
    if seen[0] == 0x16 {
        // A handshake record: content type 22, then version 3.x.
        return match seen.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    let prefix_of = |whole: &[u8]| whole.starts_with(seen);
    if seen.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if prefix_of(H2_PREFACE) {
        return None;
    }
    if METHODS.iter().any(|m| seen.starts_with(m)) {
        // `METHOD TARGET HTTP/1.x\r\n`: decided once the line is complete.
        return match seen.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                let line = &seen[..end];
                let http = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
                Some(if http {
                    Detected::Http1
                } else {
                    Detected::Opaque
                })
            }
            None if seen.len() >= MAX_REQUEST_LINE => Some(Detected::Opaque),
            None => None,
        };
    }
    if METHODS.iter().any(|m| prefix_of(m)) {
        return None;
    }
    Some(Detected::Opaque)
}

/// Peeks at the first bytes until they decide the protocol; `None` if the
/// client sent nothing decisive within `timeout` (a server-speaks-first
/// protocol, or a slow client), which callers treat as opaque.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Detected> {
    let peek = async {
        let mut buf = vec![0u8; MAX_REQUEST_LINE];
        let mut seen = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Detected::Opaque,
                Ok(n) => n,
            };
            if let Some(d) = classify(&buf[..n]) {
                return d;
            }
            if n == seen {
                // peek returns at once while unread bytes wait; give the
                // client a moment to send the rest.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, peek).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_protocols_apart() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST /x HTTP/1.0\r\n"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&[0x16, 3, 1, 0, 200]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x00\x00\x0bhello"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Opaque));
        // A method followed by something that is not HTTP/1.
        assert_eq!(classify(b"GET something\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(&[0x16, 9]), Some(Detected::Opaque));
    }

    #[test]
    fn waits_while_the_bytes_could_be_either() {
        for partial in [
            &b""[..],
            b"G",
            b"GE",
            b"PUT",
            b"GET /very/long",
            b"PRI * HTTP/2",
            b"P",
            &[0x16],
        ] {
            assert_eq!(
                classify(partial),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(classify(&long), Some(Detected::Opaque));
    }
}
