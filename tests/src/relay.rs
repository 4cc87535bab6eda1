//! Relays a test can cut: every connection through one is dropped at once, as a network failure
//! drops it, while the relay keeps accepting (so the client reconnects through it). A TCP relay
//! between bridge-agent and mcp-bridge (a test in another process cuts it by connecting to
//! `cut_port`), and a Unix-socket relay between the gateway and bridge-agent.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
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
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        tokio::spawn(relay(listener, target, shared.clone(), stop.clone()));
        let cut_port = cutter(shared.clone(), stop.clone()).await;
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
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let cut = shared.current();
        tokio::spawn(async move {
            if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                pipe(inbound, outbound, cut).await;
            }
        });
    }
}

/// A port on which any connection cuts every relayed connection of `shared`.
async fn cutter(shared: Arc<Shared>, stop: CancellationToken) -> u16 {
    let cutter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_port = cutter.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                accepted = cutter.accept() => if accepted.is_ok() { shared.cut() },
            }
        }
    });
    cut_port
}

/// Copies both ways until either side closes or the connection is cut.
async fn pipe<A, B>(mut a: A, mut b: B, cut: CancellationToken)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
    }
}

/// A Unix-socket relay: the gateway connects to [`UnixRelay::path`], the relay to bridge-agent's
/// socket. [`UnixRelay::cut`] drops the gateway's connection while both processes stay up.
pub struct UnixRelay {
    pub path: PathBuf,
    /// Any connection to this port cuts every relayed connection (for a test in another process).
    pub cut_port: u16,
    shared: Arc<Shared>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl UnixRelay {
    /// Relays a socket in a new temporary directory to `target`.
    pub async fn start(target: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let (s, t, target) = (shared.clone(), stop.clone(), target.to_owned());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = t.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let cut = s.current();
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = UnixStream::connect(&target).await {
                        pipe(inbound, outbound, cut).await;
                    }
                });
            }
        });
        let cut_port = cutter(shared.clone(), stop.clone()).await;
        Self {
            path,
            cut_port,
            shared,
            stop,
            _dir: dir,
        }
    }

    /// Drops every connection through the relay now.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixRelay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.cut();
    }
}
