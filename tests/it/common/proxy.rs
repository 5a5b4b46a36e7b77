//! A fault-injecting TCP proxy on loopback, between ccc-etl and the emulator. Every connection
//! carries one exchange (the proxy closes it after the response), and the proxy's schedule
//! decides, connection by connection, what happens to the answer: passed on whole, reset
//! mid-body (RST), cut in half (FIN), stalled mid-body, or never answered at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The whole answer.
    Pass,
    /// Half the answer, then a TCP reset.
    ResetMidBody,
    /// Half the answer, then a clean close: a response shorter than its Content-Length.
    CutInHalf,
    /// Half the answer, then nothing while the connection stays open (a read timeout).
    StallMidBody,
    /// The connection is accepted and the request read, and nothing is ever answered.
    NeverAnswer,
}

/// A running proxy.
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `upstream`, applying `schedule` to connections in turn (cycling).
    pub async fn start(upstream: SocketAddr, schedule: Vec<Fault>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let schedule = Arc::new(schedule);
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let fault = schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()];
                    seen.lock().unwrap().push(fault);
                    tokio::spawn(serve(client, upstream, fault));
                }
            }
        });
        FaultProxy { addr, seen, task }
    }

    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The faults applied so far, in order.
    pub fn seen(&self) -> Vec<Fault> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP message (headers, then `Content-Length` bytes of body).
async fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault) {
    let Some(request) = read_message(&mut client).await else {
        return;
    };
    if fault == Fault::NeverAnswer {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&request).await.is_err() {
        return;
    }
    let Some(response) = read_message(&mut server).await else {
        return;
    };
    let half = response.len() / 2;
    match fault {
        Fault::Pass => {
            let _ = client.write_all(&response).await;
            let _ = client.shutdown().await;
        }
        Fault::ResetMidBody => {
            let _ = client.write_all(&response[..half]).await;
            let _ = client.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A zero linger makes the close a reset, at once (nothing is left to block on).
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            drop(client);
        }
        Fault::CutInHalf => {
            let _ = client.write_all(&response[..half]).await;
            let _ = client.shutdown().await;
        }
        Fault::StallMidBody => {
            let _ = client.write_all(&response[..half]).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Fault::NeverAnswer => unreachable!(),
    }
}
