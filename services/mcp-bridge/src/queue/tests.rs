use super::*;
use crate::answer::Part;
use crate::caller::Caller;
use provider_shared::bridge::{ModelMeta, Payload, RawJson};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A streamed chat request whose one message is its id (the broker's tests use it too).
pub(crate) fn invoke(id: &str) -> ModelInvoke {
    ModelInvoke {
        id: id.into(),
        session_id: None,
        model_meta: ModelMeta {
            provider: "local".into(),
            label: "m".into(),
            requested_scopes: vec![],
        },
        payload: Payload::Chat {
            messages: RawJson::encode(&json!([{"role": "user", "content": id}])).unwrap(),
            parameters: RawJson::encode(&json!({"stream": true})).unwrap(),
        },
    }
}

const LEASE: Duration = Duration::from_secs(5);

fn queue_of(ids: &[&str], owner: Owner) -> Queue {
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    let mut q = Queue::default();
    for id in ids {
        q.push(invoke(id), owner, tx.clone(), Instant::now(), false)
            .unwrap_or_else(|_| panic!("push"));
    }
    q
}

fn want(caller: Caller) -> Want {
    Want {
        fits: None,
        lease_for: LEASE,
        caller,
    }
}

fn present() -> Caller {
    Caller::until(CancellationToken::new())
}

fn in_session(session: &str) -> Caller {
    let mut caller = present();
    caller.session = Some(Arc::from(session));
    caller
}

/// Takes the oldest queued request at once, or nothing (without waiting).
fn take(q: &mut Queue, now: Instant) -> Option<Handout> {
    match q.take_or_wait(want(present()), now) {
        Taken::Now(h) => Some(h),
        Taken::Waiting { serial, .. } => {
            assert!(q.stop_waiting(serial));
            None
        }
    }
}

fn waiting(q: &mut Queue, caller: Caller) -> (u64, tokio::sync::oneshot::Receiver<Handout>) {
    match q.take_or_wait(want(caller), Instant::now()) {
        Taken::Waiting { serial, handout } => (serial, handout),
        Taken::Now(h) => panic!("took {} at once", h.id),
    }
}

#[test]
fn fifo_with_leases_and_duplicate_ids_refused() {
    let mut q = queue_of(&["a", "b"], 1);
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    assert!(q.push(invoke("a"), 2, tx, Instant::now(), false).is_err());
    let now = Instant::now();
    let a = take(&mut q, now).unwrap();
    assert_eq!((a.id.as_str(), a.attempt), ("a", 1));
    assert_eq!((q.queued(), q.leased_count()), (1, 1));
    assert!(q.leased("a", &a.lease, now, LEASE).is_ok());
    assert!(q
        .leased("a", "lease-other", now, LEASE)
        .unwrap_err()
        .0
        .contains("handed out again"));
    assert_eq!(take(&mut q, now).unwrap().id, "b");
    assert!(take(&mut q, now).is_none());
}

#[test]
fn one_request_goes_to_the_longest_waiting_poll_and_wakes_no_other() {
    let mut q = Queue::default();
    let (first, mut first_rx) = waiting(&mut q, present());
    let (_second, mut second_rx) = waiting(&mut q, present());
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    q.push(invoke("a"), 1, tx.clone(), Instant::now(), false)
        .unwrap();
    assert_eq!(first_rx.try_recv().unwrap().id, "a");
    assert!(second_rx.try_recv().is_err(), "the second poll still waits");
    assert!(!q.stop_waiting(first), "the first was served");
    assert_eq!((q.queued(), q.waiting_polls()), (0, 1));
    // A poll that comes now waits behind the second instead of overtaking it.
    let (_third, mut third_rx) = waiting(&mut q, present());
    q.push(invoke("b"), 1, tx, Instant::now(), false).unwrap();
    assert_eq!(second_rx.try_recv().unwrap().id, "b");
    assert!(third_rx.try_recv().is_err());
}

#[test]
fn a_poll_whose_caller_is_gone_is_never_handed_a_request() {
    let mut q = Queue::default();
    let gone = CancellationToken::new();
    let (_dead, mut dead_rx) = waiting(&mut q, Caller::until(gone.clone()));
    let (_live, mut live_rx) = waiting(&mut q, present());
    let (_dropped, dropped_rx) = waiting(&mut q, present());
    drop(dropped_rx);
    gone.cancel();
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    q.push(invoke("a"), 1, tx.clone(), Instant::now(), false)
        .unwrap();
    assert!(dead_rx.try_recv().is_err());
    assert_eq!(live_rx.try_recv().unwrap().attempt, 1);
    // Neither the dead poll nor the one whose receiver is gone is still waiting.
    q.push(invoke("b"), 1, tx, Instant::now(), false).unwrap();
    assert_eq!((q.queued(), q.waiting_polls()), (1, 0));
    assert_eq!(take(&mut q, Instant::now()).unwrap().attempt, 1);
}

#[test]
fn a_released_hand_out_goes_to_the_next_waiting_poll_from_the_front() {
    let mut q = queue_of(&["a", "b"], 1);
    let now = Instant::now();
    let a = take(&mut q, now).unwrap();
    assert_eq!(take(&mut q, now).unwrap().id, "b");
    let (_w, mut rx) = waiting(&mut q, present());
    assert!(q.release("a", &a.lease, now));
    let again = rx.try_recv().unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("a", 2));
}

#[test]
fn a_poll_that_wants_only_some_requests_waits_for_one_it_fits() {
    let mut q = Queue::default();
    let picky = Want {
        fits: Some(Box::new(|e: &Entry| e.invoke.id == "b")),
        lease_for: LEASE,
        caller: present(),
    };
    let Taken::Waiting {
        handout: mut picky_rx,
        ..
    } = q.take_or_wait(picky, Instant::now())
    else {
        panic!("nothing was queued")
    };
    let (_any, mut any_rx) = waiting(&mut q, present());
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    q.push(invoke("a"), 1, tx.clone(), Instant::now(), false)
        .unwrap();
    assert!(picky_rx.try_recv().is_err());
    assert_eq!(any_rx.try_recv().unwrap().id, "a");
    q.push(invoke("b"), 1, tx, Instant::now(), false).unwrap();
    assert_eq!(picky_rx.try_recv().unwrap().id, "b");
}

#[test]
fn a_lapsed_lease_goes_back_to_the_front_and_its_holder_may_still_answer_while_nobody_took_it() {
    let mut q = queue_of(&["a", "b"], 1);
    let t0 = Instant::now();
    let first = take(&mut q, t0).unwrap();
    assert!(q.expire(t0 + LEASE / 2).is_empty());
    let expired = q.expire(t0 + LEASE);
    assert!(expired.len() == 1 && expired[0].requeued);
    // Nobody took it: its holder's late reply is taken, and the request is leased again.
    assert!(q.leased("a", &first.lease, t0 + LEASE, LEASE).is_ok());
    assert_eq!((q.queued(), q.leased_count()), (1, 1));
    // Lapsed again, and this time handed to another poll: the old lease is refused.
    q.expire(t0 + LEASE * 3);
    let again = take(&mut q, t0 + LEASE * 3).unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("a", 2));
    assert!(q
        .leased("a", &first.lease, t0 + LEASE * 3, LEASE)
        .unwrap_err()
        .0
        .contains("handed out again"));
    assert!(q.leased("a", &again.lease, t0 + LEASE * 3, LEASE).is_ok());
    q.end("a", Ended::Answered);
    assert!(q
        .leased("a", &again.lease, t0, LEASE)
        .unwrap_err()
        .0
        .contains("already answered"));
}

#[test]
fn a_lapsed_lease_after_output_ends_the_request() {
    let mut q = queue_of(&["a"], 1);
    let t0 = Instant::now();
    let h = take(&mut q, t0).unwrap();
    let entry = q.leased("a", &h.lease, t0, LEASE).unwrap();
    let shape = entry.shape.clone();
    let part: Part = serde_json::from_value(json!({"content": "x", "done": false})).unwrap();
    entry.answer.apply("a", &shape, part).unwrap();
    q.renew("a", t0 + LEASE, LEASE);
    assert!(q.expire(t0 + LEASE).is_empty());
    let expired = q.expire(t0 + LEASE * 2);
    assert!(!expired[0].requeued && expired[0].entry.is_some());
    assert!(q
        .leased("a", &h.lease, t0, LEASE)
        .unwrap_err()
        .0
        .contains("after part"));
    assert_eq!(q.queued() + q.leased_count(), 0);
}

#[test]
fn a_session_that_leaves_gives_back_what_it_holds_and_ends_what_it_began() {
    let mut q = queue_of(&["a", "b", "c"], 1);
    let now = Instant::now();
    let take_in =
        |q: &mut Queue, session: &str| match q.take_or_wait(want(in_session(session)), now) {
            Taken::Now(h) => h,
            Taken::Waiting { .. } => panic!("nothing queued"),
        };
    let a = take_in(&mut q, "gone");
    let b = take_in(&mut q, "gone");
    let c = take_in(&mut q, "stays");
    let entry = q.leased("b", &b.lease, now, LEASE).unwrap();
    let shape = entry.shape.clone();
    let part: Part = serde_json::from_value(json!({"content": "x", "done": false})).unwrap();
    entry.answer.apply("b", &shape, part).unwrap();
    let (requeued, ended) = q.release_holder("gone", now);
    assert_eq!(requeued, ["a"]);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].invoke.id, "b");
    assert!(q
        .leased("a", &a.lease, now, LEASE)
        .unwrap_err()
        .0
        .contains("back in the queue"));
    assert!(q.leased("c", &c.lease, now, LEASE).is_ok());
    assert_eq!(take(&mut q, now).unwrap().id, "a");
}

#[test]
fn release_puts_it_back_in_front_and_hand_outs_share_the_payload() {
    let mut q = queue_of(&["a", "b", "c"], 1);
    let now = Instant::now();
    let a = take(&mut q, now).unwrap();
    let b = take(&mut q, now).unwrap();
    assert!(
        !q.release("b", "lease-other", now),
        "only the holder releases"
    );
    assert!(q.release("b", &b.lease, now));
    let again = take(&mut q, now).unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("b", 2));
    // Both hand-outs share the entry's payload: nothing was copied.
    let entry = q.get("b").unwrap();
    let shared = |h: &Handout| {
        RawJson::ptr_eq(
            h.payload.messages().unwrap(),
            entry.invoke.payload.messages().unwrap(),
        )
    };
    assert!(shared(&b) && shared(&again));
    let messages: Value = again.payload.messages().unwrap().parse().unwrap();
    assert_eq!(messages[0]["content"], "b");
    assert!(q.leased("a", &a.lease, now, LEASE).is_ok());
}

#[test]
fn cancel_and_owner_drop_withdraw_with_reasons() {
    let mut q = queue_of(&["a", "b"], 1);
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    q.push(invoke("c"), 2, tx, Instant::now(), false)
        .unwrap_or_else(|_| panic!());
    let now = Instant::now();
    let h = take(&mut q, now).unwrap();
    assert!(q.cancel(2, "a").is_none(), "only the owner cancels");
    assert!(q.cancel(1, "a").is_some());
    assert!(q
        .leased("a", &h.lease, now, LEASE)
        .unwrap_err()
        .0
        .contains("cancelled"));
    assert_eq!(q.drop_owner(1).len(), 1);
    assert!(q
        .leased("b", "x", now, LEASE)
        .unwrap_err()
        .0
        .contains("withdrawn"));
    assert_eq!(q.count_for(2), (1, 0));
    assert_eq!(take(&mut q, now).unwrap().id, "c");
    assert!(q
        .leased("zzz", "x", now, LEASE)
        .unwrap_err()
        .0
        .contains("unknown request_id"));
}

#[test]
fn the_audit_digest_of_what_was_asked_is_the_one_of_the_decoded_payload() {
    // What the digest was when the payload was held decoded: the payload without its
    // parameters, as compact JSON.
    let before = |payload: &Payload| {
        let mut asked = serde_json::to_value(payload).unwrap();
        asked.as_object_mut().unwrap().remove("parameters");
        provider_shared::digest::sha256_hex(&serde_json::to_vec(&asked).unwrap())
    };
    let mut completion = invoke("c");
    completion.payload = Payload::Completion {
        prompt: "fn main() {".into(),
        suffix: Some("}".into()),
        system: None,
        parameters: RawJson::encode(&json!({"max_tokens": 5})).unwrap(),
    };
    let (tx, _rx) = provider_shared::ws_peer::queue(8);
    let mut q = Queue::default();
    for asked in [invoke("a"), completion] {
        let id = asked.id.clone();
        let expected = before(&asked.payload);
        q.push(asked, 1, tx.clone(), Instant::now(), false).unwrap();
        assert_eq!(q.get(&id).unwrap().prompt_sha256(), expected, "{id}");
    }
}
