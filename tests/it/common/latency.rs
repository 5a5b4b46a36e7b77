//! A TCP proxy on loopback that delivers every chunk it forwards, each way, a fixed time after
//! it read it: a store a round trip away (twice the delay), with the bandwidth of loopback. It
//! notes each HTTP request it passes on (method and path), and counts connections: a client
//! opens another only while its others are busy, so more than one shows requests in flight at
//! once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
}

/// A running proxy.
pub struct LatencyProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    /// Proxies to `upstream`, each chunk delayed by `delay` in each direction.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn({
            let (requests, connections) = (requests.clone(), connections.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(serve(client, upstream, delay, requests.clone()));
                }
            }
        });
        LatencyProxy {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The requests passed on so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    requests: Arc<Mutex<Vec<Request>>>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut heads = Heads {
        requests,
        ..Heads::default()
    };
    tokio::join!(
        pump(cr, sw, delay, move |b| heads.feed(b)),
        pump(sr, cw, delay, |_| {})
    );
}

/// Copies `from` to `to`, each chunk written `delay` after it was read (a delay line: chunks
/// in flight overlap, so the delay is latency, not a bandwidth limit).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    mut seen: impl FnMut(&[u8]),
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen(&buf[..n]);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// Finds the request heads in a client's byte stream (`Content-Length` bodies; the clients
/// here send no chunked bodies).
#[derive(Default)]
struct Heads {
    requests: Arc<Mutex<Vec<Request>>>,
    pending: Vec<u8>,
    body_left: usize,
}

impl Heads {
    fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        loop {
            let n = self.body_left.min(self.pending.len());
            self.pending.drain(..n);
            self.body_left -= n;
            if self.body_left > 0 {
                return;
            }
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.pending.drain(..end + 4);
            let mut first = head.lines().next().unwrap_or_default().split(' ');
            let (method, path) = (first.next().unwrap_or_default(), first.next());
            let lower = head.to_ascii_lowercase();
            assert!(
                !lower.contains("transfer-encoding: chunked"),
                "the latency proxy reads Content-Length bodies only: {head}"
            );
            self.body_left = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            self.requests.lock().unwrap().push(Request {
                method: method.to_string(),
                path: path.unwrap_or_default().to_string(),
            });
        }
    }
}
