//! Lets gRPC-core clients (Python, C++, Java) use the Workload API socket.
//!
//! Since grpc 1.57 those clients send the percent-encoded socket path as the
//! HTTP/2 `:authority` of unix-socket calls (grpc/grpc#38142). hyperium/h2,
//! under tonic, rejects that value as malformed and resets the stream, so
//! py-spiffe could not fetch an SVID. An authority means nothing on a unix
//! socket, so this shim sits between the socket and tonic and, in request
//! header blocks only, replaces an invalid `:authority` with `localhost`
//! (what grpc-go sends). Every other byte passes through unchanged.
//!
//! Header blocks are HPACK-decoded with the client's dynamic table and
//! re-encoded as literals without indexing, so the server's table is never
//! touched and both tables stay consistent.

use std::io;

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer must accept frames of this size.
const MAX_FRAME: usize = 16_384;
/// Larger header blocks are refused (gRPC's default metadata limit is 8 KiB).
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Wraps a client connection; returns the stream to hand to the server.
pub fn shim<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (server_side, ours) = tokio::io::duplex(256 * 1024);
    let (client_read, mut client_write) = tokio::io::split(client);
    let (mut ours_read, ours_write) = tokio::io::split(ours);
    tokio::spawn(async move {
        if let Err(e) = forward_requests(client_read, ours_write).await {
            tracing::debug!(error = %e, "workload API connection closed");
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ours_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    server_side
}

async fn forward_requests<R, W>(mut from: R, mut to: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    let mut decoder = Decoder::new();
    loop {
        let (kind, flags, stream, payload) = match read_frame(&mut from).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return to.shutdown().await,
            Err(e) => return Err(e),
        };
        if kind != FRAME_HEADERS {
            write_frame(&mut to, kind, flags, stream, &payload).await?;
            continue;
        }
        let mut block = header_fragment(flags, payload)?;
        let mut end_headers = flags & FLAG_END_HEADERS != 0;
        while !end_headers {
            let (kind, cont_flags, cont_stream, payload) = read_frame(&mut from).await?;
            if kind != FRAME_CONTINUATION || cont_stream != stream {
                return Err(invalid(
                    "HEADERS not followed by CONTINUATION on the same stream",
                ));
            }
            block.extend_from_slice(&payload);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(invalid("header block too large"));
            }
            end_headers = cont_flags & FLAG_END_HEADERS != 0;
        }
        let headers = decoder
            .decode(&block)
            .map_err(|e| invalid(&format!("HPACK: {e}")))?;
        let encoded = encode_literals(&fix_authority(headers));
        write_header_block(&mut to, flags & FLAG_END_STREAM, stream, &encoded).await?;
    }
}

/// Replaces an `:authority` that is not a valid URI authority.
fn fix_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
            *value = b"localhost".to_vec();
        }
    }
    headers
}

/// The header block fragment of a HEADERS frame, without padding or priority.
fn header_fragment(flags: u8, payload: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = *payload
            .first()
            .ok_or_else(|| invalid("empty padded HEADERS"))? as usize;
        start = 1;
        end = end
            .checked_sub(pad)
            .ok_or_else(|| invalid("padding longer than the frame"))?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if start > end {
        return Err(invalid("HEADERS frame too short"));
    }
    Ok(payload[start..end].to_vec())
}

/// HPACK "literal header field without indexing, new name" for every header:
/// stateless, so the receiver's dynamic table is left as it was.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        encode_string(&mut out, name);
        encode_string(&mut out, value);
    }
    out
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    // Not Huffman-coded: H bit 0, then the length as a 7-bit-prefix integer.
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

async fn write_header_block<W: AsyncWrite + Unpin>(
    to: &mut W,
    end_stream: u8,
    stream: u32,
    block: &[u8],
) -> io::Result<()> {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    let flags = end_stream | if last { FLAG_END_HEADERS } else { 0 };
    write_frame(to, FRAME_HEADERS, flags, stream, first).await?;
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        write_frame(to, FRAME_CONTINUATION, flags, stream, chunk).await?;
    }
    Ok(())
}

async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0u8; 9];
    from.read_exact(&mut header).await?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    if length > MAX_HEADER_BLOCK.max(1 << 20) {
        return Err(invalid("frame too large"));
    }
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; length];
    from.read_exact(&mut payload).await?;
    Ok((header[3], header[4], stream, payload))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    to: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut header = [len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    header[5..].copy_from_slice(&stream.to_be_bytes());
    to.write_all(&header).await?;
    to.write_all(payload).await
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_authorities_become_localhost_and_valid_ones_stay() {
        let headers = vec![
            (b":authority".to_vec(), b"%2Ftmp%2Fw.sock".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
        ];
        let fixed = fix_authority(headers);
        assert_eq!(fixed[0].1, b"localhost");
        assert_eq!(fixed[1].1, b"/SpiffeWorkloadAPI/FetchX509SVID");
        let kept = fix_authority(vec![(b":authority".to_vec(), b"localhost:80".to_vec())]);
        assert_eq!(kept[0].1, b"localhost:80");
    }

    #[test]
    fn literals_decode_back_to_the_same_headers() {
        let headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b"x-long".to_vec(), vec![b'a'; 300]),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ];
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(&encode_literals(&headers)).unwrap(), headers);
        // The decoder's dynamic table is untouched: a second block decodes the same.
        assert_eq!(decoder.decode(&encode_literals(&headers)).unwrap(), headers);
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let payload = vec![2, 1, 2, 3, 4, 5, 0xAA, 0xBB, 0, 0];
        let fragment = header_fragment(FLAG_PADDED | FLAG_PRIORITY, payload).unwrap();
        assert_eq!(fragment, vec![0xAA, 0xBB]);
        assert!(header_fragment(FLAG_PADDED, vec![9, 1]).is_err());
    }
}
