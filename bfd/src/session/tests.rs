use super::*;

const MS: Duration = Duration::from_millis(1);

fn config(ms: u64, mult: u8) -> SessionConfig {
    SessionConfig::new(MS * ms as u32, mult)
}

/// What the remote sends: its state, discriminators, intervals.
fn remote(state: State, your: u32) -> ControlPacket {
    ControlPacket {
        diagnostic: Diagnostic::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        authentication: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: 0xbeef,
        your_discriminator: your,
        desired_min_tx: 100_000,
        required_min_rx: 100_000,
        required_min_echo_rx: 0,
    }
}

fn sent(actions: &[Action]) -> Vec<ControlPacket> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn changes(actions: &[Action]) -> Vec<Change> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StateChanged(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn timer(actions: &[Action], which: Timer) -> Option<Duration> {
    actions.iter().rev().find_map(|a| match a {
        Action::StartTimer(t, d) if *t == which => Some(*d),
        _ => None,
    })
}

/// A session brought Up by a remote at 100 ms, with the Poll Sequence of the way up answered.
fn up(config: SessionConfig) -> Session {
    let mut s = Session::new(config, 7, 1);
    s.start();
    s.handle(Event::Received(remote(State::Init, 7)));
    assert_eq!(s.state(), State::Up);
    s.handle(Event::Received(ControlPacket {
        final_: true,
        ..remote(State::Up, 7)
    }));
    assert!(!s.polling());
    s
}

#[test]
fn starts_down_sending_slowly_with_no_remote_discriminator() {
    let mut s = Session::new(config(100, 3), 7, 1);
    let out = s.start();
    let p = sent(&out)[0];
    assert_eq!(p.state, State::Down);
    assert_eq!(p.my_discriminator, 7);
    assert_eq!(p.your_discriminator, 0);
    // §6.8.3: not Up, so at least one second.
    assert_eq!(p.desired_min_tx, 1_000_000);
    assert_eq!(p.required_min_rx, 100_000);
    let first = timer(&out, Timer::Transmit).unwrap();
    assert!(first >= MS * 750 && first <= MS * 1000, "{first:?}");
}

#[test]
fn three_way_handshake_down_init_up() {
    let mut s = Session::new(config(100, 3), 7, 1);
    s.start();
    let out = s.handle(Event::Received(remote(State::Down, 0)));
    assert_eq!(
        changes(&out),
        vec![Change {
            from: State::Down,
            to: State::Init,
            diagnostic: Diagnostic::None
        }]
    );
    // The remote learns our state at once, with its discriminator echoed.
    let p = sent(&out)[0];
    assert_eq!((p.state, p.your_discriminator), (State::Init, 0xbeef));
    let out = s.handle(Event::Received(remote(State::Up, 7)));
    assert_eq!(changes(&out)[0].to, State::Up);
    // Up: the configured 100 ms goes out in a Poll.
    let p = sent(&out)[0];
    assert!(p.poll && !p.final_);
    assert_eq!(p.desired_min_tx, 100_000);
    assert_eq!(timer(&out, Timer::Detect), Some(MS * 300));
}

#[test]
fn down_hearing_init_goes_straight_up() {
    let mut s = Session::new(config(300, 3), 7, 1);
    s.start();
    let out = s.handle(Event::Received(remote(State::Init, 7)));
    assert_eq!(changes(&out)[0].from, State::Down);
    assert_eq!(s.state(), State::Up);
}

#[test]
fn down_ignores_a_remote_that_says_up() {
    let mut s = Session::new(config(300, 3), 7, 1);
    s.start();
    let out = s.handle(Event::Received(remote(State::Up, 7)));
    assert!(changes(&out).is_empty());
    assert_eq!(s.state(), State::Down);
}

#[test]
fn remote_down_or_admin_down_takes_the_session_down_with_diag_3() {
    for signal in [State::Down, State::AdminDown] {
        let mut s = up(config(100, 3));
        let your = if signal == State::Down { 0 } else { 7 };
        let out = s.handle(Event::Received(remote(signal, your)));
        assert_eq!(
            changes(&out),
            vec![Change {
                from: State::Up,
                to: State::Down,
                diagnostic: Diagnostic::NeighborSignaledSessionDown
            }]
        );
        // Back to the slow rate, announced in a Poll.
        let p = sent(&out)[0];
        assert_eq!((p.state, p.diagnostic.code()), (State::Down, 3));
        assert!(p.poll);
        assert_eq!(p.desired_min_tx, 1_000_000);
    }
}

#[test]
fn silence_for_the_detection_time_takes_it_down_with_diag_1() {
    let mut s = up(config(100, 3));
    assert_eq!(s.detection_time(), Some(MS * 300));
    let out = s.handle(Event::TimerExpired(Timer::Detect));
    assert_eq!(
        changes(&out)[0],
        Change {
            from: State::Up,
            to: State::Down,
            diagnostic: Diagnostic::ControlDetectionTimeExpired
        }
    );
    assert_eq!(s.remote_discriminator(), 0);
    assert_eq!(s.detection_time(), None);
    let p = sent(&out)[0];
    assert_eq!((p.your_discriminator, p.diagnostic.code()), (0, 1));
}

#[test]
fn detection_time_uses_the_slower_of_our_rx_and_their_tx() {
    let mut s = Session::new(config(100, 3), 7, 1);
    s.start();
    s.handle(Event::Received(ControlPacket {
        detect_mult: 5,
        desired_min_tx: 250_000,
        ..remote(State::Down, 0)
    }));
    // 5 × max(100 ms, 250 ms)
    assert_eq!(s.detection_time(), Some(MS * 1250));
}

#[test]
fn a_poll_is_answered_at_once_with_a_final_and_no_poll() {
    let mut s = Session::new(config(100, 3), 7, 1);
    s.start();
    s.handle(Event::Received(remote(State::Down, 0)));
    // We are polling ourselves (Init is not Up, nothing changed yet)…
    let out = s.handle(Event::Received(ControlPacket {
        poll: true,
        ..remote(State::Init, 7)
    }));
    let finals: Vec<_> = sent(&out).into_iter().filter(|p| p.final_).collect();
    assert_eq!(finals.len(), 1);
    assert!(
        !finals[0].poll,
        "a packet must not carry both Poll and Final"
    );
    assert_eq!(finals[0].state, State::Up);
}

#[test]
fn a_slower_transmit_interval_applies_only_after_the_final() {
    let mut s = up(config(100, 3));
    assert_eq!(s.transmit_interval(), Some(MS * 100));
    s.handle(Event::Reconfigure(config(500, 3)));
    assert!(s.polling());
    // Still 100 ms until the remote confirms…
    assert_eq!(s.transmit_interval(), Some(MS * 100));
    let out = s.handle(Event::TimerExpired(Timer::Transmit));
    let p = sent(&out)[0];
    assert!(p.poll);
    assert_eq!(p.desired_min_tx, 500_000);
    let out = s.handle(Event::Received(ControlPacket {
        final_: true,
        ..remote(State::Up, 7)
    }));
    assert!(!s.polling());
    assert_eq!(s.transmit_interval(), Some(MS * 500));
    let next = timer(&out, Timer::Transmit).unwrap();
    assert!(next >= MS * 375 && next <= MS * 500);
}

#[test]
fn a_faster_transmit_interval_applies_at_once() {
    let mut s = up(config(300, 3));
    let out = s.handle(Event::Reconfigure(config(100, 3)));
    assert_eq!(s.transmit_interval(), Some(MS * 100));
    assert!(sent(&out)[0].poll);
    assert!(timer(&out, Timer::Transmit).unwrap() <= MS * 100);
}

#[test]
fn a_smaller_receive_interval_shapes_detection_only_after_the_final() {
    let mut s = up(SessionConfig {
        required_min_rx: MS * 300,
        ..config(100, 3)
    });
    // Remote sends at 100 ms but we asked for 300: 3 × 300.
    assert_eq!(s.detection_time(), Some(MS * 900));
    s.handle(Event::Reconfigure(config(100, 3)));
    assert_eq!(s.detection_time(), Some(MS * 900));
    s.handle(Event::Received(ControlPacket {
        final_: true,
        ..remote(State::Up, 7)
    }));
    assert_eq!(s.detection_time(), Some(MS * 300));
}

#[test]
fn transmit_interval_follows_the_remote_required_rx() {
    let mut s = up(config(100, 3));
    let out = s.handle(Event::Received(ControlPacket {
        required_min_rx: 400_000,
        ..remote(State::Up, 7)
    }));
    assert_eq!(s.transmit_interval(), Some(MS * 400));
    assert!(timer(&out, Timer::Transmit).unwrap() >= MS * 300);
}

#[test]
fn a_remote_asking_for_no_packets_gets_none() {
    let mut s = up(config(100, 3));
    let out = s.handle(Event::Received(ControlPacket {
        required_min_rx: 0,
        ..remote(State::Up, 7)
    }));
    assert!(out.contains(&Action::StopTimer(Timer::Transmit)));
    assert!(sent(&s.handle(Event::TimerExpired(Timer::Transmit))).is_empty());
}

#[test]
fn passive_waits_for_the_remote() {
    let mut s = Session::new(
        SessionConfig {
            passive: true,
            ..config(100, 3)
        },
        7,
        1,
    );
    assert!(s.start().is_empty());
    assert!(s.handle(Event::TimerExpired(Timer::Transmit)).is_empty());
    let out = s.handle(Event::Received(remote(State::Down, 0)));
    assert_eq!(sent(&out)[0].state, State::Init);
    assert!(timer(&out, Timer::Transmit).is_some());
    // The remote falls silent: a passive session goes quiet again.
    let out = s.handle(Event::TimerExpired(Timer::Detect));
    assert_eq!(s.state(), State::Down);
    assert!(out.contains(&Action::StopTimer(Timer::Transmit)));
    assert!(sent(&out).is_empty());
}

#[test]
fn a_remote_in_demand_mode_gets_no_periodic_packets_while_both_are_up() {
    let mut s = up(config(100, 3));
    let demand = ControlPacket {
        demand: true,
        ..remote(State::Up, 7)
    };
    let out = s.handle(Event::Received(demand));
    assert!(out.contains(&Action::StopTimer(Timer::Transmit)));
    // A Poll from it is still answered, and our own Poll Sequence still goes out.
    let out = s.handle(Event::Received(ControlPacket {
        poll: true,
        ..demand
    }));
    assert!(sent(&out)[0].final_);
    let out = s.handle(Event::Reconfigure(config(200, 3)));
    assert!(sent(&out)[0].poll);
    assert!(timer(&out, Timer::Transmit).is_some());
}

#[test]
fn admin_down_is_sent_and_holds_until_admin_up() {
    let mut s = up(config(100, 3));
    let out = s.handle(Event::AdminDown);
    assert_eq!(changes(&out)[0].to, State::AdminDown);
    assert!(out.contains(&Action::StopTimer(Timer::Detect)));
    let p = sent(&out)[0];
    assert_eq!(
        (p.state, p.diagnostic),
        (State::AdminDown, Diagnostic::AdministrativelyDown)
    );
    // The remote's packets change nothing while held down.
    let out = s.handle(Event::Received(remote(State::Init, 7)));
    assert!(changes(&out).is_empty());
    assert_eq!(s.state(), State::AdminDown);
    let out = s.handle(Event::AdminUp);
    assert_eq!(changes(&out)[0].to, State::Down);
    s.handle(Event::Received(remote(State::Init, 7)));
    assert_eq!(s.state(), State::Up);
}

#[test]
fn a_packet_for_another_discriminator_is_ignored() {
    let mut s = Session::new(config(100, 3), 7, 1);
    s.start();
    assert!(s.handle(Event::Received(remote(State::Init, 8))).is_empty());
    assert_eq!(s.remote_discriminator(), 0);
}

#[test]
fn config_validation_names_the_field() {
    assert_eq!(config(100, 3).validate(), Ok(()));
    assert_eq!(config(100, 0).validate(), Err(ConfigError::DetectMult));
    let bad = SessionConfig {
        required_min_rx: Duration::ZERO,
        ..config(100, 3)
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .starts_with("receive interval")
    );
}
