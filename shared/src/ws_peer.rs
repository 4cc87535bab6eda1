//! One WebSocket peer loop for both ends of the bridge protocol (docs/PROTOCOL.md §1): bridge-agent
//! (client, tokio-tungstenite) and mcp-bridge (server, axum's upgrade, adapted to the same
//! [`Message`]). After the handshake, [`run`] selects over the socket's read half, a bounded
//! outbound queue, a timer (heartbeats, status reports), a silence deadline and shutdown; every
//! send is bounded by a timeout; it ends with a Close carrying a code and a reason.
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// How long a Close waits for the peer's answering Close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A Close frame's reason may hold at most this many bytes (RFC 6455 §5.5: 125 minus the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// The loop's clocks, and the Close it sends at shutdown.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Nothing received for this long ends the connection.
    pub silence: Duration,
    /// How often [`Handler::on_tick`] runs.
    pub tick: Duration,
    /// When it first runs, from the start of the loop.
    pub first_tick: Duration,
    /// A send (or one batch of the frames queued, `crate::batch`) that takes longer means the
    /// peer stopped reading: the connection ends.
    pub send_timeout: Duration,
    /// The Close sent at shutdown, after the queued frames.
    pub goodbye: (CloseCode, String),
}

/// What to do after a text frame arrived.
#[derive(Debug)]
pub enum Step {
    Continue,
    /// Send these at once, ahead of what waits in the outbound queue.
    Reply(Vec<Message>),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
}

/// What one end does with the frames of a connection.
pub trait Handler {
    /// What producers queue for the peer.
    type Out;
    /// A text frame arrived.
    fn on_text(&mut self, text: &str) -> Step;
    /// One queued item is going out now.
    fn encode(&mut self, item: Self::Out) -> Message;
    /// The timer fired: frames to send (heartbeats, reports), if any.
    fn on_tick(&mut self) -> Vec<Message>;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("the peer closed the connection ({0:?})")]
    PeerClosed(Option<CloseFrame>),
    #[error("read failed: {0}")]
    ReadFailed(String),
    #[error("the connection closed")]
    Gone,
    #[error("nothing received for {0:?}")]
    Silent(Duration),
    #[error("send failed: {0}")]
    SendFailed(String),
    #[error("send blocked for {0:?}: the peer stopped reading")]
    SendBlocked(Duration),
    #[error("closed by this side ({0}): {1}")]
    Closed(CloseCode, String),
    #[error("shutting down")]
    ShuttingDown,
}

/// A bounded outbound queue: the sending half for producers, the receiving half for [`run`].
pub fn queue<T>(bound: usize) -> (Outbound<T>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel(bound.max(1));
    (Outbound(tx), rx)
}

/// The producers' half of a connection's outbound queue. Producers that can wait use
/// [`Outbound::send`]; code that must not wait (it holds a lock) uses [`Outbound::try_push`]
/// and decides what a full queue means for its item, or [`Outbound::push_last`] for an item
/// that must arrive.
#[derive(Debug)]
pub struct Outbound<T>(mpsc::Sender<T>);

impl<T> Clone for Outbound<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Why [`Outbound::try_push`] did not queue an item; it is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// The queue holds its bound: the peer is that far behind.
    Full(T),
    /// The connection is gone.
    Closed(T),
}

impl<T: Send + 'static> Outbound<T> {
    /// Queues `item`, waiting while the queue is full; `Err` with the item once the connection
    /// is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        self.0.send(item).await.map_err(|e| e.0)
    }

    /// Queues `item` if there is room now.
    pub fn try_push(&self, item: T) -> Result<(), Refused<T>> {
        self.0.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => Refused::Full(item),
            mpsc::error::TrySendError::Closed(item) => Refused::Closed(item),
        })
    }

    /// Queues the last item of a stream (a result), which must arrive even when the queue is
    /// full: then a task waits for room. One such task per stream at most, so their number is
    /// bounded by the streams in flight. `false` when the connection is gone (or, outside a
    /// runtime, the queue is full).
    pub fn push_last(&self, item: T) -> bool {
        match self.try_push(item) {
            Ok(()) => true,
            Err(Refused::Closed(_)) => false,
            Err(Refused::Full(item)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let tx = self.0.clone();
                    runtime.spawn(async move {
                        let _ = tx.send(item).await;
                    });
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// Whether `other` feeds the same connection.
    pub fn same_queue(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Serves an established connection until it drops, goes silent, a send blocks, the handler
/// closes it, or `closing` fires (then the queued items go out before the Close). Says why.
pub async fn run<S, E, H>(
    ws: &mut S,
    handler: &mut H,
    outbound: &mut mpsc::Receiver<H::Out>,
    settings: &Settings,
    closing: &CancellationToken,
) -> Ended
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
    E: std::fmt::Display,
    H: Handler,
{
    let limit = settings.send_timeout;
    // Both clocks are made once and moved on, not rebuilt on every turn.
    let mut ticks = tokio::time::interval_at(
        Instant::now() + settings.first_tick,
        settings.tick.max(MIN_TICK),
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let silence = sleep(settings.silence);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg)) => {
                    silence.as_mut().reset(Instant::now() + settings.silence);
                    match msg {
                        Message::Text(text) => match handler.on_text(&text) {
                            Step::Continue => {}
                            Step::Reply(frames) => {
                                for frame in frames {
                                    if let Err(ended) = send(ws, frame, limit).await {
                                        return ended;
                                    }
                                }
                            }
                            Step::Close(code, reason) => {
                                close(ws, code, &reason).await;
                                return Ended::Closed(code, reason);
                            }
                        },
                        Message::Close(frame) => return Ended::PeerClosed(frame),
                        // Pings are answered by tungstenite itself; pongs and binary frames
                        // only count as signs of life.
                        _ => {}
                    }
                }
                Some(Err(err)) => return Ended::ReadFailed(err.to_string()),
                None => return Ended::Gone,
            },
            Some(item) = outbound.recv() => {
                // What else is queued already goes in the same write (crate::batch).
                let first = handler.encode(item);
                let more = || outbound.try_recv().ok().map(|item| handler.encode(item));
                let batch = crate::batch::write_queued(ws, first, more, Message::len);
                match timeout(limit, batch).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Ended::SendFailed(err.to_string()),
                    Err(_) => return Ended::SendBlocked(limit),
                }
            }
            _ = ticks.tick() => {
                for frame in handler.on_tick() {
                    if let Err(ended) = send(ws, frame, limit).await {
                        return ended;
                    }
                }
            }
            _ = &mut silence => return Ended::Silent(settings.silence),
            _ = closing.cancelled() => {
                // Items queued by streams ended at shutdown go out before the Close.
                while let Ok(item) = outbound.try_recv() {
                    let frame = handler.encode(item);
                    if send(ws, frame, limit).await.is_err() {
                        break;
                    }
                }
                let (code, reason) = &settings.goodbye;
                close(ws, *code, reason).await;
                return Ended::ShuttingDown;
            }
        }
    }
}

/// A zero period would make `interval` panic.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Sends one frame within `limit`.
pub async fn send<S, E>(ws: &mut S, frame: Message, limit: Duration) -> Result<(), Ended>
where
    S: Sink<Message, Error = E> + Unpin,
    E: std::fmt::Display,
{
    match timeout(limit, ws.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(Ended::SendFailed(err.to_string())),
        Err(_) => Err(Ended::SendBlocked(limit)),
    }
}

/// Sends a Close with `code` and `reason` (cut to [`MAX_CLOSE_REASON`] bytes, which the
/// protocol allows no more of) and waits up to [`CLOSE_WAIT`] for the peer's answer.
pub async fn close<S, E>(ws: &mut S, code: CloseCode, reason: &str)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: fit_reason(reason).into(),
    };
    let _ = timeout(CLOSE_WAIT, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

fn fit_reason(reason: &str) -> String {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason.to_owned();
    }
    let mut end = MAX_CLOSE_REASON - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    type Ws = WebSocketStream<DuplexStream>;

    async fn pair(buffer: usize) -> (Ws, Ws) {
        let (a, b) = tokio::io::duplex(buffer);
        let ours = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let theirs = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (ours, theirs)
    }

    fn settings() -> Settings {
        Settings {
            silence: Duration::from_secs(20),
            tick: Duration::from_secs(10),
            first_tick: Duration::from_secs(10),
            send_timeout: Duration::from_secs(5),
            goodbye: (CloseCode::Away, "going away".into()),
        }
    }

    /// Echoes `echo:<x>` texts, closes on `bye`, queues strings as text, ticks `tick`.
    #[derive(Default)]
    struct Echo {
        seen: Vec<String>,
        ticks: usize,
    }

    impl Handler for Echo {
        type Out = String;
        fn on_text(&mut self, text: &str) -> Step {
            self.seen.push(text.to_owned());
            if let Some(rest) = text.strip_prefix("echo:") {
                Step::Reply(vec![Message::text(rest)])
            } else if text == "bye" {
                Step::Close(CloseCode::Policy, "asked to".into())
            } else {
                Step::Continue
            }
        }
        fn encode(&mut self, item: String) -> Message {
            Message::text(item)
        }
        fn on_tick(&mut self) -> Vec<Message> {
            self.ticks += 1;
            vec![Message::text(format!("tick{}", self.ticks))]
        }
    }

    async fn next_text(ws: &mut Ws) -> String {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => return t.to_string(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    async fn next_close(ws: &mut Ws) -> Option<CloseFrame> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("no close: {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_in_and_out() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        let peer = tokio::spawn(async move {
            theirs.send(Message::text("echo:hi")).await.unwrap();
            assert_eq!(next_text(&mut theirs).await, "hi");
            tx.send("queued".into()).await.unwrap();
            assert_eq!(next_text(&mut theirs).await, "queued");
            theirs.send(Message::text("plain")).await.unwrap();
            theirs.close(None).await.unwrap();
            theirs
        });
        let mut echo = Echo::default();
        let ended = run(&mut ours, &mut echo, &mut rx, &settings(), &closing).await;
        assert!(matches!(ended, Ended::PeerClosed(None)), "{ended}");
        assert_eq!(echo.seen, ["echo:hi", "plain"]);
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn queued_frames_go_out_together_in_order_and_a_lone_one_at_once() {
        let (mut ours, mut theirs) = pair(256 * 1024).await;
        let (tx, mut rx) = queue::<String>(16);
        for i in 0..10 {
            tx.send(format!("queued {i}")).await.unwrap();
        }
        let closing = CancellationToken::new();
        let peer = tokio::spawn(async move {
            for i in 0..10 {
                assert_eq!(next_text(&mut theirs).await, format!("queued {i}"));
            }
            // Nothing behind it: it is not held back waiting for company.
            tx.send("lone".into()).await.unwrap();
            let lone = timeout(Duration::from_secs(2), next_text(&mut theirs)).await;
            assert_eq!(lone.expect("the lone frame arrives at once"), "lone");
            theirs.close(None).await.unwrap();
        });
        let ended = run(
            &mut ours,
            &mut Echo::default(),
            &mut rx,
            &settings(),
            &closing,
        )
        .await;
        assert!(matches!(ended, Ended::PeerClosed(None)), "{ended}");
        peer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_come_on_time_and_silence_ends_the_connection() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (_tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        let started = Instant::now();
        let peer = tokio::spawn(async move {
            // Reading ticks only: the peer never sends, so the silence deadline ends it.
            let mut at = Vec::new();
            while let Some(Ok(msg)) = theirs.next().await {
                if let Message::Text(t) = msg {
                    at.push((t.to_string(), started.elapsed()));
                }
            }
            at
        });
        // Silence ends it between ticks, so no tick races the deadline.
        let s = Settings {
            first_tick: Duration::ZERO,
            silence: Duration::from_secs(25),
            ..settings()
        };
        let ended = run(&mut ours, &mut Echo::default(), &mut rx, &s, &closing).await;
        assert!(
            matches!(ended, Ended::Silent(d) if d == s.silence),
            "{ended}"
        );
        assert_eq!(started.elapsed(), s.silence);
        drop(ours);
        let ticks = peer.await.unwrap();
        let secs: Vec<(String, u64)> = ticks.into_iter().map(|(t, d)| (t, d.as_secs())).collect();
        assert_eq!(
            secs,
            [
                ("tick1".into(), 0),
                ("tick2".into(), 10),
                ("tick3".into(), 20)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_from_the_peer_puts_silence_off() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (_tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        let started = Instant::now();
        let peer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                theirs.send(Message::Pong(Vec::new().into())).await.unwrap();
            }
            while theirs.next().await.is_some() {}
        });
        let ended = run(
            &mut ours,
            &mut Echo::default(),
            &mut rx,
            &settings(),
            &closing,
        )
        .await;
        assert!(matches!(ended, Ended::Silent(_)), "{ended}");
        // Three pongs 15 s apart, then 20 s of nothing.
        assert_eq!(started.elapsed(), Duration::from_secs(65));
        drop(ours);
        peer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_what_is_queued_then_closes_with_the_goodbye() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        tx.send("one".into()).await.unwrap();
        tx.send("two".into()).await.unwrap();
        closing.cancel();
        let peer = tokio::spawn(async move {
            let mut texts = Vec::new();
            let close = loop {
                match theirs.next().await {
                    Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
                    Some(Ok(Message::Close(f))) => break f,
                    other => panic!("{other:?}"),
                }
            };
            // Answering the Close lets ours finish at once.
            while theirs.next().await.is_some() {}
            (texts, close)
        });
        let started = Instant::now();
        let ended = run(
            &mut ours,
            &mut Echo::default(),
            &mut rx,
            &settings(),
            &closing,
        )
        .await;
        assert!(matches!(ended, Ended::ShuttingDown), "{ended}");
        assert!(started.elapsed() < CLOSE_WAIT);
        let (texts, close) = peer.await.unwrap();
        assert_eq!(texts, ["one", "two"]);
        let close = close.unwrap();
        assert_eq!(close.code, CloseCode::Away);
        assert_eq!(close.reason.as_str(), "going away");
    }

    #[tokio::test(start_paused = true)]
    async fn the_handler_closes_with_its_code_and_reason() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (_tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        let peer = tokio::spawn(async move {
            theirs.send(Message::text("bye")).await.unwrap();
            next_close(&mut theirs).await
        });
        let ended = run(
            &mut ours,
            &mut Echo::default(),
            &mut rx,
            &settings(),
            &closing,
        )
        .await;
        assert!(
            matches!(&ended, Ended::Closed(CloseCode::Policy, r) if r == "asked to"),
            "{ended}"
        );
        let close = peer.await.unwrap().unwrap();
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason.as_str(), "asked to");
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_the_peer_does_not_read_ends_after_the_timeout() {
        // A tiny pipe the peer never reads: the socket's buffer fills and the send blocks.
        let (mut ours, theirs) = pair(256).await;
        let (tx, mut rx) = queue::<String>(4);
        let closing = CancellationToken::new();
        tx.send("x".repeat(64 * 1024)).await.unwrap();
        let s = Settings {
            silence: Duration::from_secs(600),
            ..settings()
        };
        let started = Instant::now();
        let ended = run(&mut ours, &mut Echo::default(), &mut rx, &s, &closing).await;
        assert!(
            matches!(ended, Ended::SendBlocked(d) if d == s.send_timeout),
            "{ended}"
        );
        assert_eq!(started.elapsed(), s.send_timeout);
        drop(theirs);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_holds_its_bound_and_a_full_queue_refuses_without_ending_the_link() {
        let (mut ours, mut theirs) = pair(64 * 1024).await;
        let (tx, mut rx) = queue::<String>(2);
        assert_eq!(tx.try_push("a".into()), Ok(()));
        assert_eq!(tx.try_push("b".into()), Ok(()));
        assert_eq!(tx.try_push("c".into()), Err(Refused::Full("c".into())));
        // The last item of a stream waits for room instead.
        assert!(tx.push_last("last".into()));
        let closing = CancellationToken::new();
        let peer = tokio::spawn(async move {
            let mut texts = Vec::new();
            for _ in 0..3 {
                texts.push(next_text(&mut theirs).await);
            }
            // The link still carries frames after the refusal.
            theirs.send(Message::text("echo:alive")).await.unwrap();
            texts.push(next_text(&mut theirs).await);
            theirs.close(None).await.unwrap();
            texts
        });
        let ended = run(
            &mut ours,
            &mut Echo::default(),
            &mut rx,
            &settings(),
            &closing,
        )
        .await;
        assert!(matches!(ended, Ended::PeerClosed(_)), "{ended}");
        assert_eq!(peer.await.unwrap(), ["a", "b", "last", "alive"]);
        drop(rx);
        assert_eq!(tx.try_push("z".into()), Err(Refused::Closed("z".into())));
        assert!(!tx.push_last("z".into()));
        assert!(tx.is_closed());
    }

    #[tokio::test]
    async fn waiting_producers_go_on_once_the_loop_drains() {
        let (tx, mut rx) = queue::<u32>(1);
        tx.send(1).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        assert_eq!(rx.recv().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert!(tx.same_queue(&tx.clone()));
        assert!(!tx.same_queue(&queue::<u32>(1).0));
    }

    #[test]
    fn long_close_reasons_are_cut_at_a_character() {
        assert_eq!(fit_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = fit_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
