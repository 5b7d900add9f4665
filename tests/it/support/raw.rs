//! Raw TCP on both sides of the proxy, for bytes a well-behaved HTTP library would never send:
//! a client that writes exactly what a test says ([`exchange`], [`closed_within`]), and an app
//! that answers with exactly what a test says ([`RawApp`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Writes `bytes` on a new connection and reads until the proxy closes it (at most `limit`).
/// Returns what was read and whether the proxy closed the connection in time.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let (out, closed) = read_until_closed(&mut s, limit).await;
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads until EOF (or a reset) or `limit`; returns the bytes and whether the peer closed.
pub async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the proxy closes `s` within `limit` (whatever it sends before).
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    read_until_closed(s, limit).await.1
}

/// The status code of the first response in `text`, if there is one.
pub fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// An app on raw TCP: reads each connection's request head and answers with `response`,
/// byte for byte, then closes. Records every head it read.
pub struct RawApp {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawApp {
    pub async fn start(response: &'static [u8]) -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = s.write_all(response).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawApp { addr, heads, task }
    }

    /// The request heads the app read, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
