//! Property tests of the call state machine (`Call::apply`): Twilio's status callbacks arrive late, out
//! of order and more than once, each with its `SequenceNumber`; however they arrive, the call must end
//! where the ordered callbacks take it, and never report a status further back than one it reported.

use proptest::prelude::*;
use time::OffsetDateTime;
use voice_call_mcp::calls::{Call, CallRequest, CallStatus, CallUpdate, E164};

use CallStatus::*;

fn new_call() -> Call {
    let number = |n: &str| E164::parse(n).unwrap();
    let request = CallRequest {
        to: number("+14155550100"),
        from: number("+14155550199"),
        context: "book a table".into(),
        first_message: None,
        voice: None,
        language: None,
        record: false,
        machine_detection: false,
        max_duration_secs: 600,
    };
    Call::new("CA00000000000000000000000000000001".into(), request, Queued, false)
}

/// One status callback as Twilio posts it: the n-th carries `SequenceNumber` n, `completed` carries
/// `CallDuration`, and each is stamped a second after the one before.
fn callback(status: CallStatus, seq: u32) -> CallUpdate {
    CallUpdate::Status {
        status,
        sequence: Some(seq),
        duration_secs: (status == Completed).then_some(42),
        answered_by: None,
        at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + i64::from(seq)),
    }
}

/// A call's statuses in the order Twilio reports them: some way along queued → initiated → ringing →
/// in-progress, then `completed` if it was answered, or else possibly one of the other endings.
fn realistic_path() -> impl Strategy<Value = Vec<CallStatus>> {
    // Twilio need not report `queued` (the REST reply already said so).
    let answered = any::<bool>().prop_map(|with_queued| {
        let path = [Queued, Initiated, Ringing, InProgress, Completed];
        path[usize::from(!with_queued)..].to_vec()
    });
    let unanswered = (1..=3usize, prop::option::of(prop::sample::select(vec![Busy, NoAnswer, Failed, Canceled])))
        .prop_map(|(reached, ending)| {
            let mut path = vec![Queued, Initiated, Ringing][..reached].to_vec();
            path.extend(ending);
            path
        });
    prop_oneof![answered, unanswered]
}

/// The callbacks of a path, and an order of delivery: every callback at least once, some of them again,
/// all shuffled.
fn deliveries() -> impl Strategy<Value = (Vec<CallUpdate>, Vec<CallUpdate>)> {
    realistic_path().prop_flat_map(|path| {
        let ordered: Vec<CallUpdate> = path.iter().enumerate().map(|(i, &s)| callback(s, i as u32)).collect();
        let n = ordered.len();
        (Just(ordered), prop::collection::vec(0..n, 0..2 * n)).prop_flat_map(|(ordered, extra)| {
            let mut indices: Vec<usize> = (0..ordered.len()).collect();
            indices.extend(extra);
            let ordered2 = ordered.clone();
            Just(indices)
                .prop_shuffle()
                .prop_map(move |order| (ordered2.clone(), order.iter().map(|&i| ordered2[i].clone()).collect()))
                .boxed()
        })
    })
}

/// The call after `updates`, and the status it held after each one.
fn run(updates: &[CallUpdate]) -> (Call, Vec<CallStatus>) {
    let mut call = new_call();
    let mut seen = vec![call.status];
    for u in updates {
        call.apply(u.clone());
        seen.push(call.status);
    }
    (call, seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_ends_in_the_ordered_status_duration_and_ending((ordered, delivered) in deliveries()) {
        let (expected, _) = run(&ordered);
        let (got, _) = run(&delivered);
        prop_assert_eq!(got.status, expected.status);
        prop_assert_eq!(got.duration_secs, expected.duration_secs);
        prop_assert_eq!(got.ended_at.is_some(), expected.ended_at.is_some());
    }

    #[test]
    fn any_delivery_records_the_answer_as_the_ordered_one_does((ordered, delivered) in deliveries()) {
        let (expected, _) = run(&ordered);
        let (got, _) = run(&delivered);
        prop_assert_eq!(got.answered_at.is_some(), expected.answered_at.is_some(), "delivered {:?}", delivered);
    }

    #[test]
    fn the_reported_status_never_goes_backwards((_, delivered) in deliveries()) {
        let (_, seen) = run(&delivered);
        for pair in seen.windows(2) {
            prop_assert!(pair[0] == pair[1] || pair[0].can_advance_to(pair[1]), "{:?} then {:?}", pair[0], pair[1]);
        }
    }
}

/// The smallest case the properties above find: `completed` (with its duration) overtakes `in-progress`.
/// The call ends `completed` with its duration, but the late `in-progress` can no longer advance the
/// status, so `answered_at` is never set, although the ordered callbacks set it: the record says an
/// answered, completed call was never answered.
#[test]
fn a_late_in_progress_still_records_the_answer() {
    let ordered: Vec<CallUpdate> =
        [Initiated, Ringing, InProgress, Completed].iter().enumerate().map(|(i, &s)| callback(s, i as u32)).collect();
    let delivered = [ordered[0].clone(), ordered[1].clone(), ordered[3].clone(), ordered[2].clone()];
    let (expected, _) = run(&ordered);
    let (got, _) = run(&delivered);
    assert_eq!(got.status, Completed);
    assert_eq!(got.duration_secs, Some(42));
    assert!(expected.answered_at.is_some());
    assert!(got.answered_at.is_some(), "answered_at lost when in-progress arrives after completed");
}
