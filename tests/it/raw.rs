//! A raw HTTP/1.1 client on one TCP connection, for what reqwest hides: a reader that stops reading (a
//! small receive buffer), a request body sent while the response is read, and whether the server closed
//! the connection cleanly or reset it.

use crate::support::WAIT;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to the server at `base` (`http://127.0.0.1:PORT`). `receive_buffer` sets `SO_RCVBUF` before
/// connecting, which bounds the window the server can fill while this client does not read;
/// `send_buffer` sets `SO_SNDBUF`, which keeps most of an upload in flight until the server reads it.
pub async fn connect(base: &str, receive_buffer: Option<u32>, send_buffer: Option<u32>) -> TcpStream {
    let addr = base.trim_start_matches("http://").parse().expect("a loopback base URL");
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    if let Some(size) = send_buffer {
        socket.set_send_buffer_size(size).unwrap();
    }
    socket.connect(addr).await.expect("the server accepts")
}

/// One connection's read side, keeping everything read so far.
pub struct Reader {
    half: OwnedReadHalf,
    pub read: Vec<u8>,
}

impl Reader {
    pub fn new(half: OwnedReadHalf) -> Self {
        Self { half, read: Vec::new() }
    }

    /// Reads until `needle` has arrived (bounded by [`WAIT`]): where it starts in what was read, or `None`
    /// if the connection closed or was reset first.
    async fn read_until(&mut self, needle: &[u8]) -> Option<usize> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(at) = self.read.windows(needle.len()).position(|w| w == needle) {
                    return Some(at);
                }
                let mut chunk = [0; 16 * 1024];
                match self.half.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                }
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("neither {:?} nor a close arrived in time", String::from_utf8_lossy(needle)))
    }

    /// Reads until `needle` has arrived, which it must.
    pub async fn until(&mut self, needle: &[u8]) {
        if self.read_until(needle).await.is_none() {
            let seen = String::from_utf8_lossy(&self.read[..self.read.len().min(600)]).into_owned();
            panic!("{:?} never arrived; read: {seen}", String::from_utf8_lossy(needle));
        }
    }

    /// Reads until the server closes the connection (bounded by [`WAIT`]): `Err` if it was reset.
    pub async fn until_closed(&mut self) -> std::io::Result<()> {
        let closed = tokio::time::timeout(WAIT, async {
            let mut chunk = vec![0; 64 * 1024];
            loop {
                match self.half.read(&mut chunk).await? {
                    0 => return Ok(()),
                    n => self.read.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        closed.unwrap_or_else(|_| panic!("the server kept the connection open after {} bytes", self.read.len()))
    }

    /// Reads a response head and returns its status code; `None` if the connection closed or was reset
    /// before a whole head arrived.
    pub async fn status(&mut self) -> Option<u16> {
        let end = self.read_until(b"\r\n\r\n").await?;
        let line = std::str::from_utf8(&self.read[..end]).ok()?.lines().next()?;
        line.split(' ').nth(1)?.parse().ok()
    }

    /// The body of a chunked response, as much of it as was read, without the chunk framing.
    pub fn chunked_body(&self) -> Vec<u8> {
        let head_end = self.read.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
        let mut rest = &self.read[head_end..];
        let mut body = Vec::new();
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end]).ok().and_then(|s| usize::from_str_radix(s, 16).ok());
            let Some(size) = size.filter(|&n| n > 0 && rest.len() >= line_end + 2 + n) else { break };
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[(line_end + 4 + size).min(rest.len())..];
        }
        body
    }
}

/// Splits a connection into a [`Reader`] and its write half.
pub fn split(stream: TcpStream) -> (Reader, OwnedWriteHalf) {
    let (read, write) = stream.into_split();
    (Reader::new(read), write)
}
