//! Two session state machines wired back to back on a simulated clock and a lossy link: they
//! reach Up, settle their Poll Sequences, detect a cut within the detection time, and come
//! back when the link returns. Plus property tests of the decoder and the machine.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use wren_bfd::packet::{ControlPacket, State};
use wren_bfd::session::{Action, Event, SLOW_TX, Session, SessionConfig, Timer};

const MS: Duration = Duration::from_millis(1);
/// One-way delay on the simulated link.
const DELAY: Duration = Duration::from_micros(200);

/// Two systems, their timers, and the packets in flight, on a virtual clock.
struct Pair {
    now: Duration,
    sessions: [Session; 2],
    timers: [BTreeMap<Timer, Duration>; 2],
    /// (arrival time, receiver, packet)
    in_flight: Vec<(Duration, usize, ControlPacket)>,
    link_up: bool,
    /// (time, side, from, to)
    changes: Vec<(Duration, usize, State, State)>,
    sent: Vec<(usize, ControlPacket)>,
}

impl Pair {
    fn new(a: SessionConfig, b: SessionConfig) -> Self {
        let mut pair = Pair {
            now: Duration::ZERO,
            sessions: [Session::new(a, 0x1111, 1), Session::new(b, 0x2222, 2)],
            timers: [BTreeMap::new(), BTreeMap::new()],
            in_flight: Vec::new(),
            link_up: true,
            changes: Vec::new(),
            sent: Vec::new(),
        };
        for side in 0..2 {
            let actions = pair.sessions[side].start();
            pair.apply(side, actions);
        }
        pair
    }

    fn apply(&mut self, side: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(p) => {
                    assert!(!(p.poll && p.final_), "Poll and Final together: {p:?}");
                    if p.state != State::Up {
                        assert!(p.desired_min_tx() >= SLOW_TX, "fast while not Up: {p:?}");
                    }
                    // Every packet the machine builds passes the receiver's checks.
                    assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
                    self.sent.push((side, p));
                    if self.link_up {
                        self.in_flight.push((self.now + DELAY, 1 - side, p));
                    }
                }
                Action::StartTimer(t, d) => {
                    assert!(!d.is_zero());
                    self.timers[side].insert(t, self.now + d);
                }
                Action::StopTimer(t) => {
                    self.timers[side].remove(&t);
                }
                Action::StateChanged(c) => self.changes.push((self.now, side, c.from, c.to)),
            }
        }
    }

    /// Runs the next thing that happens; false when nothing is left to happen.
    fn step(&mut self) -> bool {
        let arrival = self.in_flight.iter().map(|(t, _, _)| *t).min();
        let timer = (0..2)
            .flat_map(|s| self.timers[s].iter().map(move |(t, at)| (*at, s, *t)))
            .min();
        match (arrival, timer) {
            (Some(a), t) if t.is_none_or(|(at, _, _)| a <= at) => {
                let i = self.in_flight.iter().position(|(t, _, _)| *t == a).unwrap();
                let (_, to, p) = self.in_flight.remove(i);
                self.now = a;
                if p.your_discriminator != 0 {
                    assert_eq!(
                        p.your_discriminator,
                        self.sessions[to].local_discriminator()
                    );
                }
                let actions = self.sessions[to].handle(Event::Received(p));
                self.apply(to, actions);
                true
            }
            (_, Some((at, side, t))) => {
                self.now = at;
                self.timers[side].remove(&t);
                let actions = self.sessions[side].handle(Event::TimerExpired(t));
                self.apply(side, actions);
                true
            }
            _ => false,
        }
    }

    fn run_until(&mut self, until: Duration) {
        while self.now < until && self.step() {}
    }

    fn states(&self) -> [State; 2] {
        [self.sessions[0].state(), self.sessions[1].state()]
    }
}

fn fast(ms: u64, mult: u8) -> SessionConfig {
    SessionConfig::new(MS * ms as u32, mult)
}

#[test]
fn two_sessions_reach_up_within_a_few_round_trips_and_settle_the_poll() {
    let mut pair = Pair::new(fast(100, 3), fast(300, 3));
    pair.run_until(MS * 50);
    assert_eq!(pair.states(), [State::Up, State::Up]);
    pair.run_until(MS * 3000);
    assert!(!pair.sessions[0].polling() && !pair.sessions[1].polling());
    // Each sends at the slower of its own wish and the other's receive interval.
    assert_eq!(pair.sessions[0].transmit_interval(), Some(MS * 300));
    assert_eq!(pair.sessions[1].transmit_interval(), Some(MS * 300));
    // Detection: 3 × max(own rx, remote tx).
    assert_eq!(pair.sessions[0].detection_time(), Some(MS * 900));
    assert_eq!(pair.sessions[1].detection_time(), Some(MS * 900));
    assert_eq!(pair.changes.len(), 4, "{:?}", pair.changes);
}

#[test]
fn a_cut_link_is_detected_within_the_detection_time_and_heals() {
    for (ms, mult) in [(100, 3), (300, 3), (50, 5)] {
        let mut pair = Pair::new(fast(ms, mult), fast(ms, mult));
        pair.run_until(MS * 5000);
        assert_eq!(pair.states(), [State::Up, State::Up]);
        let detection = pair.sessions[0].detection_time().unwrap();
        assert_eq!(detection, MS * (ms * u64::from(mult)) as u32);
        let cut = pair.now;
        pair.link_up = false;
        pair.in_flight.clear();
        pair.run_until(cut + detection + MS * 5);
        assert_eq!(pair.states(), [State::Down, State::Down]);
        for (at, _, from, to) in pair.changes.iter().filter(|c| c.0 > cut) {
            assert_eq!((*from, *to), (State::Up, State::Down));
            // Within the detection time of the last packet heard, which left no earlier than
            // one transmit interval before the cut.
            assert!(
                *at - cut <= detection,
                "{ms}×{mult}: down after {:?}",
                *at - cut
            );
            assert!(
                *at - cut >= detection - MS * ms as u32,
                "{ms}×{mult}: too early"
            );
        }
        let healed = pair.now;
        pair.link_up = true;
        // Down sessions send at the 1 s slow rate: back within two of them.
        pair.run_until(healed + MS * 2100);
        assert_eq!(pair.states(), [State::Up, State::Up], "{ms}×{mult}");
    }
}

#[test]
fn one_side_admin_down_takes_the_other_down_without_a_detection_expiry() {
    let mut pair = Pair::new(fast(100, 3), fast(100, 3));
    pair.run_until(MS * 3000);
    let actions = pair.sessions[0].handle(Event::AdminDown);
    pair.apply(0, actions);
    pair.run_until(pair.now + MS * 5);
    assert_eq!(pair.states(), [State::AdminDown, State::Down]);
    let actions = pair.sessions[0].handle(Event::AdminUp);
    pair.apply(0, actions);
    pair.run_until(pair.now + MS * 50);
    assert_eq!(pair.states(), [State::Up, State::Up]);
}

#[test]
fn periodic_packets_keep_to_the_interval_with_jitter() {
    let mut pair = Pair::new(fast(100, 3), fast(100, 3));
    pair.run_until(MS * 3000);
    pair.sent.clear();
    let start = pair.now;
    pair.run_until(start + MS * 10_000);
    let from_a = pair.sent.iter().filter(|(s, _)| *s == 0).count();
    // 75–100 % of 100 ms: between 100 and 134 packets in 10 s.
    assert!((100..=134).contains(&from_a), "{from_a} packets in 10 s");
}

fn any_packet() -> impl Strategy<Value = ControlPacket> {
    (
        0u8..32,
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        1u8..=255,
        1u32..,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(diag, state, poll, fin, mult, my, your, tx, rx)| {
            let state = State::from_bits(state);
            ControlPacket {
                diagnostic: wren_bfd::packet::Diagnostic::from_code(diag),
                state,
                poll,
                final_: fin && !poll,
                control_plane_independent: false,
                authentication: false,
                demand: false,
                detect_mult: mult,
                my_discriminator: my,
                your_discriminator: if matches!(state, State::Down | State::AdminDown) {
                    your
                } else {
                    your.max(1)
                },
                desired_min_tx: tx,
                required_min_rx: rx,
                required_min_echo_rx: 0,
            }
        })
}

proptest! {
    /// No input makes the decoder panic, and whatever it accepts encodes back to the same
    /// first 24 octets (the Length field aside, which it may have read beyond 24).
    #[test]
    fn decoder_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(p) = ControlPacket::decode(&bytes) {
            let again = p.encode();
            prop_assert_eq!(&again[..3], &bytes[..3]);
            prop_assert_eq!(&again[4..], &bytes[4..24]);
            prop_assert_eq!(ControlPacket::decode(&again), Ok(p));
        }
    }

    /// Any sequence of packets, expiries and operator commands keeps the machine within the
    /// RFC: legal transitions only, never Poll with Final, slow while not Up, timers positive.
    #[test]
    fn machine_stays_within_the_rfc(events in proptest::collection::vec(
        prop_oneof![
            any_packet().prop_map(Event::Received),
            Just(Event::TimerExpired(Timer::Transmit)),
            Just(Event::TimerExpired(Timer::Detect)),
            Just(Event::AdminDown),
            Just(Event::AdminUp),
            (1u64..2000, 1u8..10).prop_map(|(ms, m)| Event::Reconfigure(fast(ms, m))),
        ], 1..60)) {
        let mut s = Session::new(fast(100, 3), 0x1234, 9);
        s.start();
        for event in events {
            let event = match event {
                // Packets reach the machine only when addressed to it (or to nobody).
                Event::Received(p) if p.your_discriminator != 0 => Event::Received(ControlPacket {
                    your_discriminator: 0x1234,
                    ..p
                }),
                other => other,
            };
            let before = s.state();
            for action in s.handle(event) {
                match action {
                    Action::Send(p) => {
                        prop_assert!(!(p.poll && p.final_));
                        prop_assert_eq!(p.my_discriminator, 0x1234);
                        if p.state != State::Up {
                            prop_assert!(p.desired_min_tx() >= SLOW_TX);
                        }
                    }
                    Action::StartTimer(_, d) => prop_assert!(!d.is_zero()),
                    Action::StateChanged(c) => {
                        prop_assert_eq!(c.from, before);
                        let legal = matches!(
                            (c.from, c.to),
                            (State::Down, State::Init)
                                | (State::Down, State::Up)
                                | (State::Init, State::Up)
                                | (State::Init, State::Down)
                                | (State::Up, State::Down)
                                | (_, State::AdminDown)
                                | (State::AdminDown, State::Down)
                        );
                        prop_assert!(legal, "{:?} → {:?}", c.from, c.to);
                    }
                    Action::StopTimer(_) => {}
                }
            }
        }
    }
}
