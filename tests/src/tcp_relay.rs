//! A TCP relay between bridge-agent and mcp-bridge that a test can cut: every connection through
//! it is dropped at once, as a network failure drops a WebSocket, while the relay keeps accepting
//! (so bridge-agent reconnects through it). A test in another process cuts it by connecting to
//! `cut_port`.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpRelay {
    pub port: u16,
    /// Any connection to this port cuts every relayed connection.
    pub cut_port: u16,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Shared {
    /// Cancelled to cut the connections open now; replaced by a fresh one for the next.
    current: Mutex<CancellationToken>,
    accepted: AtomicUsize,
    cuts: AtomicUsize,
}

impl Shared {
    fn current(&self) -> CancellationToken {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn cut(&self) {
        let old = std::mem::take(
            &mut *self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        old.cancel();
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }
}

impl TcpRelay {
    /// Relays 127.0.0.1:`port` (free) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cutter = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut_port = cutter.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        tokio::spawn(relay(listener, target, shared.clone(), stop.clone()));
        let (s, t) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    accepted = cutter.accept() => if accepted.is_ok() { s.cut() },
                }
            }
        });
        Self {
            port,
            cut_port,
            shared,
            stop,
        }
    }

    /// What bridge-agent's `MCP_BRIDGE_URL` is set to.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Times the relay was cut.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.cut();
    }
}

async fn relay(listener: TcpListener, target: u16, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let mut inbound = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let cut = shared.current();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
