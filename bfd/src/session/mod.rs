//! One BFD session in asynchronous mode (RFC 5880 §6), without I/O.
//!
//! [`Session::handle`] takes an [`Event`] (a received packet that the endpoint has already
//! matched to this session, a timer expiry, an operator command) and returns the [`Action`]s
//! to carry out in order: send a packet, arm or stop a timer, report a state change. The caller
//! owns the socket and the clock.
//!
//! What the machine follows, by section of RFC 5880:
//! - §6.2 and §6.8.6: the Down → Init → Up state machine, Neighbor Signaled Session Down, and
//!   AdminDown on both sides.
//! - §6.8.3: while the session is not Up, Desired Min TX is at least one second; on the way
//!   Up the configured interval is advertised with a Poll Sequence (§6.5). A larger transmit
//!   interval takes effect only when the Poll Sequence ends; a smaller Required Min RX shapes
//!   the detection time only then too.
//! - §6.8.4: the detection time is the remote Detect Mult times the larger of our Required
//!   Min RX and the remote's Desired Min TX.
//! - §6.8.7: packets go every `max(Desired Min TX, remote Required Min RX)`, reduced by a
//!   random 0–25 % (10–25 % when Detect Mult is 1); none while the remote asks for none
//!   (Required Min RX 0); a Poll is answered with a Final at once.
//! - §6.1 and §6.8.7: a passive session sends nothing while it knows no remote discriminator
//!   (before the remote's first packet, and again once the remote fell silent); no session
//!   sends periodic packets to a remote in Demand mode while both are Up and no Poll
//!   Sequence runs.
//!
//! Beyond the letter of the RFC, as bfdd and BIRD do too: a packet goes out at once on every
//! state change, so two systems reach Up in a few round trips instead of seconds of the slow
//! transmit interval. Demand mode and the Echo function are not implemented: the machine never
//! asks for demand mode and advertises Required Min Echo RX 0.

mod jitter;

use std::time::Duration;

use crate::packet::{ControlPacket, Diagnostic, State, to_micros};

use self::jitter::Jitter;

/// The transmit interval floor while a session is not Up (RFC 5880 §6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// Longest interval the 32-bit microsecond fields carry.
const MAX_INTERVAL: Duration = Duration::from_micros(u32::MAX as u64);

/// The timing of one session, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionConfig {
    /// Desired Min TX Interval once Up.
    pub desired_min_tx: Duration,
    /// Required Min RX Interval.
    pub required_min_rx: Duration,
    /// Detect Mult: packets that may go missing before the remote declares the session down.
    pub detect_mult: u8,
    /// Wait for the remote's first packet before sending (the passive role of §6.1).
    pub passive: bool,
}

impl SessionConfig {
    /// Both intervals `interval`, detect multiplier `detect_mult`, active role.
    pub fn new(interval: Duration, detect_mult: u8) -> Self {
        Self {
            desired_min_tx: interval,
            required_min_rx: interval,
            detect_mult,
            passive: false,
        }
    }

    /// Checks the values the wire can carry and the RFC allows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("transmit interval", self.desired_min_tx),
            ("receive interval", self.required_min_rx),
        ] {
            if value < Duration::from_millis(1) || value > MAX_INTERVAL {
                return Err(ConfigError::Interval { field, value });
            }
        }
        if self.detect_mult == 0 {
            return Err(ConfigError::DetectMult);
        }
        Ok(())
    }
}

/// A session setting out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An interval below 1 ms or beyond the 32-bit microsecond field.
    #[error("{field} {value:?} is out of range (1 ms to about 71 minutes)")]
    Interval {
        /// Which interval.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// A detect multiplier of zero.
    #[error("detect multiplier must be at least 1")]
    DetectMult,
}

/// The machine's timers; the caller runs them and reports expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The next periodic packet is due.
    Transmit,
    /// The remote has been silent for the detection time.
    Detect,
}

/// Inputs of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A packet that passed [`ControlPacket::decode`] and was matched to this session.
    Received(ControlPacket),
    /// A timer the machine armed has expired.
    TimerExpired(Timer),
    /// The operator takes the session out of AdminDown (§6.8.16).
    AdminUp,
    /// The operator holds the session down (§6.8.16); the remote sees AdminDown.
    AdminDown,
    /// New timing; interval changes go through a Poll Sequence.
    Reconfigure(SessionConfig),
}

/// Outputs of the machine, to carry out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the remote.
    Send(ControlPacket),
    /// (Re)arm a timer to expire after the duration.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session changed state.
    StateChanged(Change),
}

/// A state change and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The state before.
    pub from: State,
    /// The state now.
    pub to: State,
    /// Why (the local diagnostic now in effect).
    pub diagnostic: Diagnostic,
}

/// The state of one session (the `bfd.*` variables of RFC 5880 §6.8.1).
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    remote_state: State,
    local_discriminator: u32,
    remote_discriminator: u32,
    local_diagnostic: Diagnostic,
    /// bfd.DesiredMinTxInterval: what our packets advertise.
    advertised_tx: Duration,
    /// The Desired Min TX our transmissions follow (lags an increase during a Poll Sequence).
    tx_basis: Duration,
    /// bfd.RequiredMinRxInterval: what our packets advertise.
    advertised_rx: Duration,
    /// The Required Min RX our detection time follows (lags a decrease during a Poll
    /// Sequence).
    rx_basis: Duration,
    /// bfd.RemoteMinRxInterval.
    remote_min_rx: Duration,
    /// The remote's Desired Min TX and Detect Mult, from its last packet (0 before any).
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    /// A Poll Sequence is under way.
    polling: bool,
    /// bfd.RemoteDemandMode: the remote asks for no periodic packets while both are Up.
    remote_demand: bool,
    /// The interval the Transmit timer was last armed for, jitter aside.
    armed: Option<Duration>,
    jitter: Jitter,
}

impl Session {
    /// A session in Down with local discriminator `discriminator` (non-zero, unique on the
    /// system); `seed` drives the transmit jitter. Nothing is sent until [`Session::start`].
    pub fn new(config: SessionConfig, discriminator: u32, seed: u64) -> Self {
        let advertised_tx = config.desired_min_tx.max(SLOW_TX);
        Self {
            config,
            state: State::Down,
            remote_state: State::Down,
            local_discriminator: discriminator,
            remote_discriminator: 0,
            local_diagnostic: Diagnostic::None,
            advertised_tx,
            tx_basis: advertised_tx,
            advertised_rx: config.required_min_rx,
            rx_basis: config.required_min_rx,
            // §6.8.1: initialised to 1 µs, so that we transmit until told otherwise.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            polling: false,
            remote_demand: false,
            armed: None,
            jitter: Jitter::new(seed ^ u64::from(discriminator)),
        }
    }

    /// Starts transmitting (unless passive): the first actions of the session.
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.transmitting() {
            out.push(Action::Send(self.packet(false)));
        }
        self.schedule(&mut out);
        out
    }

    /// The session state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The remote's state, from its last packet.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    /// Our discriminator.
    pub fn local_discriminator(&self) -> u32 {
        self.local_discriminator
    }

    /// The remote's discriminator, 0 while unknown.
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discriminator
    }

    /// Why the session last changed state.
    pub fn local_diagnostic(&self) -> Diagnostic {
        self.local_diagnostic
    }

    /// The timing as configured.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// How long the remote may stay silent before the session goes Down (§6.8.4); `None`
    /// before its first packet.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult > 0)
            .then(|| self.rx_basis.max(self.remote_desired_tx) * u32::from(self.remote_detect_mult))
    }

    /// The interval between our periodic packets before jitter (§6.8.7); `None` while the
    /// remote asks for no packets.
    pub fn transmit_interval(&self) -> Option<Duration> {
        (!self.remote_min_rx.is_zero()).then(|| self.tx_basis.max(self.remote_min_rx))
    }

    /// Whether a Poll Sequence is under way.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// Feeds one event; returns what the caller must do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Received(packet) => self.receive(packet, &mut out),
            Event::TimerExpired(Timer::Transmit) => {
                self.armed = None;
                if self.transmitting() {
                    out.push(Action::Send(self.packet(false)));
                }
            }
            Event::TimerExpired(Timer::Detect) => self.detection_expired(&mut out),
            Event::AdminDown => {
                if self.state != State::AdminDown {
                    self.transition(State::AdminDown, Diagnostic::AdministrativelyDown, &mut out);
                    out.push(Action::StopTimer(Timer::Detect));
                    out.push(Action::Send(self.packet(false)));
                }
            }
            Event::AdminUp => {
                if self.state == State::AdminDown {
                    self.transition(State::Down, Diagnostic::None, &mut out);
                    out.push(Action::Send(self.packet(false)));
                }
            }
            Event::Reconfigure(config) => {
                self.config = config;
                let tx = self.desired_tx();
                self.set_intervals(tx, config.required_min_rx);
                if self.polling && self.transmitting() {
                    out.push(Action::Send(self.packet(false)));
                }
            }
        }
        self.schedule(&mut out);
        out
    }

    /// §6.8.6, from "If the A bit is clear…" on: the packet is valid and is ours.
    fn receive(&mut self, packet: ControlPacket, out: &mut Vec<Action>) {
        if packet.your_discriminator != 0 && packet.your_discriminator != self.local_discriminator {
            return;
        }
        self.remote_demand = packet.demand;
        self.remote_discriminator = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_min_rx = packet.required_min_rx();
        self.remote_desired_tx = packet.desired_min_tx();
        self.remote_detect_mult = packet.detect_mult;
        if packet.final_ && self.polling {
            self.polling = false;
            self.tx_basis = self.advertised_tx;
            self.rx_basis = self.advertised_rx;
        }
        if self.state == State::AdminDown {
            return;
        }
        let before = self.state;
        match (self.state, packet.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.transition(State::Down, Diagnostic::NeighborSignaledSessionDown, out)
            }
            (_, State::AdminDown) => {}
            (State::Down, State::Down) => self.transition(State::Init, Diagnostic::None, out),
            (State::Down, State::Init) => self.transition(State::Up, Diagnostic::None, out),
            (State::Init, State::Init | State::Up) => {
                self.transition(State::Up, Diagnostic::None, out)
            }
            (State::Up, State::Down) => {
                self.transition(State::Down, Diagnostic::NeighborSignaledSessionDown, out)
            }
            _ => {}
        }
        if let Some(detect) = self.detection_time() {
            out.push(Action::StartTimer(Timer::Detect, detect));
        }
        if packet.poll {
            // §6.8.7: a Final goes out at once, whatever the transmit timer says.
            out.push(Action::Send(self.packet(true)));
        } else if self.state != before && self.transmitting() {
            out.push(Action::Send(self.packet(false)));
        }
    }

    /// §6.8.4: the remote fell silent for the detection time.
    fn detection_expired(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Init | State::Up => {
                self.transition(State::Down, Diagnostic::ControlDetectionTimeExpired, out);
                self.forget_remote();
                if self.transmitting() {
                    out.push(Action::Send(self.packet(false)));
                }
            }
            State::Down => self.forget_remote(),
            State::AdminDown => {}
        }
    }

    /// §6.8.1: a remote not heard within the detection time is unknown again.
    fn forget_remote(&mut self) {
        self.remote_discriminator = 0;
        self.remote_state = State::Down;
        self.remote_detect_mult = 0;
        self.remote_desired_tx = Duration::ZERO;
        self.remote_min_rx = Duration::from_micros(1);
        self.remote_demand = false;
    }

    fn transition(&mut self, to: State, diagnostic: Diagnostic, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        self.local_diagnostic = diagnostic;
        out.push(Action::StateChanged(Change {
            from,
            to,
            diagnostic,
        }));
        if from == State::Up || to == State::Up {
            // §6.8.3: the fast interval only while Up, the slow one otherwise.
            let tx = self.desired_tx();
            self.set_intervals(tx, self.config.required_min_rx);
        }
    }

    /// bfd.DesiredMinTxInterval for the current state.
    fn desired_tx(&self) -> Duration {
        if self.state == State::Up {
            self.config.desired_min_tx
        } else {
            self.config.desired_min_tx.max(SLOW_TX)
        }
    }

    /// Changes the advertised intervals, starting a Poll Sequence when either changes
    /// (§6.8.3): a faster transmit interval applies at once, a slower one (while Up) when the
    /// sequence ends; a smaller receive interval shapes our detection time only then.
    fn set_intervals(&mut self, tx: Duration, rx: Duration) {
        if tx == self.advertised_tx && rx == self.advertised_rx {
            return;
        }
        self.polling = true;
        let up = self.state == State::Up;
        if tx < self.advertised_tx || !up {
            self.tx_basis = tx;
        }
        if rx > self.advertised_rx || !up {
            self.rx_basis = rx;
        }
        self.advertised_tx = tx;
        self.advertised_rx = rx;
    }

    /// Whether periodic packets go out now.
    fn transmitting(&self) -> bool {
        let silenced = self.remote_demand
            && self.state == State::Up
            && self.remote_state == State::Up
            && !self.polling;
        (self.remote_discriminator != 0 || !self.config.passive)
            && !self.remote_min_rx.is_zero()
            && !silenced
    }

    /// Keeps the Transmit timer in step with the transmit interval: armed when packets are
    /// due and the interval changed or the timer fired, stopped when none are.
    fn schedule(&mut self, out: &mut Vec<Action>) {
        let interval = self
            .transmitting()
            .then(|| self.transmit_interval())
            .flatten();
        match interval {
            None => {
                if self.armed.take().is_some() {
                    out.push(Action::StopTimer(Timer::Transmit));
                }
            }
            Some(interval) if self.armed != Some(interval) => {
                self.armed = Some(interval);
                let after = self.jitter.apply(interval, self.config.detect_mult);
                out.push(Action::StartTimer(Timer::Transmit, after));
            }
            Some(_) => {}
        }
    }

    /// Our Control packet now; `final_` answers a Poll (and then carries no Poll itself).
    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diagnostic: self.local_diagnostic,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            control_plane_independent: false,
            authentication: false,
            demand: false,
            detect_mult: self.config.detect_mult,
            my_discriminator: self.local_discriminator,
            your_discriminator: self.remote_discriminator,
            desired_min_tx: to_micros(self.advertised_tx),
            required_min_rx: to_micros(self.advertised_rx),
            required_min_echo_rx: 0,
        }
    }
}

#[cfg(test)]
mod tests;
