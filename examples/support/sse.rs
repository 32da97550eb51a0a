//! A bare-socket `/events` client for the benchmarks: HTTP/1.1 by hand (the request, the response head,
//! chunked decoding) and an incremental SSE parser. Cheaper per stream than hyper's client, and it can
//! read the socket with `recvmsg` (see `stamp.rs`). Each example that opens streams includes this file
//! with `#[path]`.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One event as the parser saw it: its `id:` (if any) and its `event:` name.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) id: Option<u64>,
    pub(crate) kind: &'a str,
}

/// An incremental SSE parser: bytes in, complete events out (comments and `retry:` ignored).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub(crate) fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(Frame<'_>)) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.buf[start..].windows(2).position(|w| w == b"\n\n").map(|p| start + p) {
            let block = &self.buf[start..end];
            let mut frame = Frame { id: None, kind: "message" };
            let mut any = false;
            for line in block.split(|&b| b == b'\n') {
                if let Some(v) = line.strip_prefix(b"id: ") {
                    frame.id = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                    any = true;
                } else if let Some(v) = line.strip_prefix(b"event: ") {
                    frame.kind = std::str::from_utf8(v).unwrap_or("?");
                    any = true;
                } else if line.starts_with(b"data:") {
                    any = true;
                }
            }
            if any {
                on_event(frame);
            }
            start = end + 2;
        }
        self.buf.drain(..start);
    }
}

/// HTTP/1.1 chunked transfer coding, decoded incrementally: `size-in-hex CRLF data CRLF`, until size 0.
#[derive(Debug, Default)]
pub(crate) struct Dechunker {
    /// Data bytes left in the current chunk.
    left: usize,
    /// The CRLF after the current chunk's data is still to come.
    trailing_crlf: bool,
    /// A size line not yet complete.
    line: Vec<u8>,
}

impl Dechunker {
    /// Appends the data in `bytes` to `out`; true once the last (empty) chunk has been read.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> bool {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                out.extend_from_slice(&bytes[..n]);
                self.left -= n;
                bytes = &bytes[n..];
                continue;
            }
            // Between chunks: the CRLF ending the last one, then a size line.
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(bytes);
                return false;
            };
            self.line.extend_from_slice(&bytes[..nl]);
            bytes = &bytes[nl + 1..];
            let line = std::mem::take(&mut self.line);
            let line = std::str::from_utf8(&line).unwrap_or("").trim();
            if self.trailing_crlf {
                self.trailing_crlf = false;
                if line.is_empty() {
                    continue;
                }
            }
            match usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16) {
                Ok(0) | Err(_) => return true,
                Ok(size) => {
                    self.left = size;
                    self.trailing_crlf = true;
                }
            }
        }
        false
    }
}

/// A stream whose response head has been read: the socket, the body bytes that came with the head, and
/// the read buffer (8 KiB) to go on with.
#[derive(Debug)]
pub(crate) struct RawStream {
    pub(crate) tcp: TcpStream,
    pub(crate) first: Vec<u8>,
    pub(crate) buf: Vec<u8>,
}

/// Connects to `authority` (`host:port`), sends `GET {path}` (path and query) with the bearer token and,
/// when resuming, `Last-Event-ID`, and reads the response head: a failure is the status line or the I/O
/// error, as text. Only a `200` with a chunked body is a stream.
pub(crate) async fn open_raw(
    authority: &str,
    path: &str,
    token: &str,
    last_event_id: Option<u64>,
) -> Result<RawStream, String> {
    let mut tcp = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{resume}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = vec![0u8; 8192];
    let body_start = loop {
        let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let status = String::from_utf8_lossy(&head[..head.iter().position(|&b| b == b'\r').unwrap_or(0)]).into_owned();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status);
    }
    if !String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err("the stream is not chunked".to_owned());
    }
    Ok(RawStream { tcp, first: head.split_off(body_start), buf })
}
