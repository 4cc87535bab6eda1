//! Batched writes. Each writer task (the gateway's and bridge-agent's Unix-socket writers, the
//! WebSocket loop both ends of the bridge run) takes one frame from its queue, then drains what is
//! already queued behind it, up to [`MAX_FRAMES`] frames or about [`MAX_BYTES`] bytes, into the
//! sink's buffer, and flushes once: one write (system call, TCP segment) for a burst of chunks
//! instead of one each. It never waits for more: a lone frame is flushed at once, so batching adds
//! no latency.
use futures_util::{Sink, SinkExt};

/// The most frames one flush carries.
pub const MAX_FRAMES: usize = 64;

/// Once the frames fed reach about this many bytes, they are flushed (a frame is never split).
pub const MAX_BYTES: usize = 256 * 1024;

/// Feeds `first`, then every frame `next` yields (it must not wait: a `try_recv`), until it
/// yields none or [`MAX_FRAMES`] frames or [`MAX_BYTES`] (as `size` measures them) went in, then
/// flushes once. Returns how many frames were written.
pub async fn write_queued<S, T>(
    sink: &mut S,
    first: T,
    mut next: impl FnMut() -> Option<T>,
    size: impl Fn(&T) -> usize,
) -> Result<usize, S::Error>
where
    S: Sink<T> + Unpin,
{
    let mut bytes = size(&first);
    sink.feed(first).await?;
    let mut frames = 1;
    while frames < MAX_FRAMES && bytes < MAX_BYTES {
        let Some(frame) = next() else { break };
        bytes = bytes.saturating_add(size(&frame));
        sink.feed(frame).await?;
        frames += 1;
    }
    sink.flush().await?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Records what it is fed, and each flush as the frames it carried.
    #[derive(Default)]
    struct Recorder {
        buffered: Vec<u32>,
        flushes: Vec<Vec<u32>>,
    }

    impl Sink<u32> for Recorder {
        type Error = Infallible;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: u32) -> Result<(), Infallible> {
            self.buffered.push(item);
            Ok(())
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Infallible>> {
            let batch = std::mem::take(&mut self.buffered);
            self.flushes.push(batch);
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn what_is_queued_goes_in_one_flush_in_order_and_a_lone_frame_at_once() {
        let mut sink = Recorder::default();
        let mut queued: VecDeque<u32> = (2..=5).collect();
        let n = write_queued(&mut sink, 1, || queued.pop_front(), |_| 1).await;
        assert_eq!(n.unwrap(), 5);
        assert_eq!(sink.flushes, [vec![1, 2, 3, 4, 5]]);
        let n = write_queued(&mut sink, 6, || None, |_| 1).await;
        assert_eq!(n.unwrap(), 1);
        assert_eq!(sink.flushes.last().unwrap(), &[6], "flushed alone, at once");
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_bounds_and_the_rest_waits_for_the_next() {
        let mut sink = Recorder::default();
        let mut queued: VecDeque<u32> = (1..=100).collect();
        let first = queued.pop_front().unwrap();
        let n = write_queued(&mut sink, first, || queued.pop_front(), |_| 1).await;
        assert_eq!(n.unwrap(), MAX_FRAMES);
        assert_eq!(queued.front(), Some(&(MAX_FRAMES as u32 + 1)));
        // By bytes: each frame a quarter of the bound, so four go.
        let mut sink = Recorder::default();
        let mut queued: VecDeque<u32> = (2..=10).collect();
        let n = write_queued(&mut sink, 1, || queued.pop_front(), |_| MAX_BYTES / 4).await;
        assert_eq!(n.unwrap(), 4);
        assert_eq!(sink.flushes, [vec![1, 2, 3, 4]]);
    }
}
