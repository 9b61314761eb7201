//! Connection collisions (RFC 4271 §6.8) against graceful restart (RFC 4724 §4.2): two state
//! machines wired back to back over simulated TCP connections, both connecting at once, in
//! 3000 orders of connection and message deliveries drawn by a seeded scheduler for each
//! setting. Whatever the order, exactly one session must come up, the same connection on both
//! sides, and it must stay up: no session down (so no routes kept stale), no idle hold. And a
//! peer that really restarts must still be taken for one.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wren_bgp::fsm::{Action, ConnId, Down, DownReason, Event, Fsm, SessionConfig, State, Timer};
use wren_bgp::wire::{Afi, GracefulRestart, Message};

const AS: u32 = 64512;
const LOW_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const HIGH_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

/// What travels on one direction of a simulated TCP connection.
#[derive(Debug)]
enum Item {
    Msg(Box<Message>),
    /// The sender closed its end (after what it sent before).
    Fin,
}

/// One simulated TCP connection between side 0 and side 1.
#[derive(Debug)]
struct Link {
    /// The side that connected.
    initiator: usize,
    /// Each side's id for the connection, once its machine knows it.
    ids: [Option<ConnId>; 2],
    /// The acceptor's machine was told of the connection (TcpAccepted).
    accepted: bool,
    /// The initiator's machine was told the attempt succeeded (TcpConnected).
    connected: bool,
    /// Whether each side's end is still open.
    open: [bool; 2],
    /// Items on their way to side 0 and to side 1.
    to: [VecDeque<Item>; 2],
}

/// One speaker: its machine and what it reported.
struct Side {
    fsm: Fsm,
    ups: Vec<ConnId>,
    downs: Vec<Down>,
    idle_holds: usize,
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn config(router_id: Ipv4Addr, graceful_restart: bool, restarting: bool) -> SessionConfig {
    let mut config = SessionConfig::new(AS, router_id, AS);
    config.hold_time = 9;
    if graceful_restart {
        config.graceful_restart = Some(GracefulRestart {
            restarting,
            restart_time: 120,
            families: vec![(Afi::Ipv4Unicast, true), (Afi::Ipv6Unicast, true)],
        });
    }
    config
}

/// The choices the scheduler has at one point.
#[derive(Debug, Clone, Copy)]
enum Step {
    Accept(usize),
    Connected(usize),
    Deliver(usize, usize),
}

struct World {
    sides: [Side; 2],
    links: Vec<Link>,
    now: Instant,
    trace: Vec<String>,
}

impl World {
    fn new(configs: [SessionConfig; 2]) -> Self {
        let now = Instant::now();
        let [a, b] = configs;
        let side = |config| Side {
            fsm: Fsm::new(config, now),
            ups: Vec::new(),
            downs: Vec::new(),
            idle_holds: 0,
        };
        Self {
            sides: [side(a), side(b)],
            links: Vec::new(),
            now,
            trace: Vec::new(),
        }
    }

    fn event(&mut self, side: usize, event: Event) {
        self.now += Duration::from_micros(100);
        self.trace.push(format!("{side} <- {event:?}"));
        let actions = self.sides[side].fsm.handle(event, self.now);
        for action in actions {
            self.act(side, action);
        }
    }

    fn link_of(&self, side: usize, id: ConnId) -> Option<usize> {
        self.links.iter().position(|l| l.ids[side] == Some(id))
    }

    fn act(&mut self, side: usize, action: Action) {
        self.trace.push(format!("{side} -> {action:?}"));
        let other = 1 - side;
        match action {
            Action::Connect(id) => {
                let mut ids = [None, None];
                ids[side] = Some(id);
                self.links.push(Link {
                    initiator: side,
                    ids,
                    accepted: false,
                    connected: false,
                    open: [true, true],
                    to: [VecDeque::new(), VecDeque::new()],
                });
            }
            Action::Send(id, message) => {
                if let Some(l) = self.link_of(side, id)
                    && self.links[l].open[side]
                {
                    self.links[l].to[other].push_back(Item::Msg(Box::new(message)));
                }
            }
            Action::Close(id) => {
                if let Some(l) = self.link_of(side, id)
                    && self.links[l].open[side]
                {
                    // The peer reads what was sent before, then the end of the stream; an
                    // attempt abandoned before it completed may still have reached the
                    // peer's listener, which then sees it end at once.
                    let link = &mut self.links[l];
                    link.open[side] = false;
                    link.to[side].clear();
                    link.to[other].push_back(Item::Fin);
                }
            }
            Action::StartTimer(Timer::IdleHold, _) => self.sides[side].idle_holds += 1,
            Action::SessionUp(id, _) => self.sides[side].ups.push(id),
            Action::SessionDown(down) => self.sides[side].downs.push(down),
            _ => {}
        }
    }

    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (n, link) in self.links.iter().enumerate() {
            let (i, r) = (link.initiator, 1 - link.initiator);
            if !link.accepted && link.open[r] {
                steps.push(Step::Accept(n));
            }
            if !link.connected && link.open[i] {
                steps.push(Step::Connected(n));
            }
            for to in 0..2 {
                let ready = if to == i {
                    link.connected
                } else {
                    link.accepted
                };
                if ready && link.open[to] && !link.to[to].is_empty() {
                    steps.push(Step::Deliver(n, to));
                }
            }
        }
        steps
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Accept(n) => {
                let acceptor = 1 - self.links[n].initiator;
                let id = self.sides[acceptor].fsm.next_conn_id();
                self.links[n].accepted = true;
                self.links[n].ids[acceptor] = Some(id);
                self.event(acceptor, Event::TcpAccepted(id));
            }
            Step::Connected(n) => {
                let initiator = self.links[n].initiator;
                self.links[n].connected = true;
                let id = self.links[n].ids[initiator].expect("attempt id");
                self.event(initiator, Event::TcpConnected(id));
            }
            Step::Deliver(n, to) => {
                let id = self.links[n].ids[to].expect("tracked");
                match self.links[n].to[to].pop_front() {
                    Some(Item::Msg(message)) => self.event(to, Event::Message(id, *message)),
                    Some(Item::Fin) => {
                        self.links[n].open[to] = false;
                        self.event(to, Event::TcpFailed(id));
                    }
                    None => {}
                }
            }
        }
    }

    /// Runs the scheduler until nothing is left to deliver. `pending` is started on the way,
    /// at a point the scheduler picks.
    fn settle(&mut self, rng: &mut Rng, mut pending: Option<usize>) -> Result<(), String> {
        loop {
            let steps = self.steps();
            if let Some(side) = pending
                && (steps.is_empty() || rng.below(3) == 0)
            {
                pending = None;
                self.event(side, Event::ManualStart);
                continue;
            }
            let Some(&step) = steps.get(rng.below(steps.len().max(1))) else {
                return Ok(());
            };
            if self.trace.len() > 10_000 {
                return Err("no end to the exchange".into());
            }
            self.step(step);
        }
    }

    /// Checks that both sides are up on one connection, each having brought up `ups`
    /// sessions, with no idle hold; returns the connection.
    fn one_session(&self, ups: [usize; 2]) -> Result<usize, String> {
        for (n, side) in self.sides.iter().enumerate() {
            if side.idle_holds > 0 {
                return Err(format!("side {n} went to idle hold"));
            }
            if side.ups.len() != ups[n] {
                return Err(format!("side {n} brought {} sessions up", side.ups.len()));
            }
            if side.fsm.state() != State::Established {
                return Err(format!("side {n} ended in {}", side.fsm.state()));
            }
        }
        let link = |side: usize| {
            let id = self.sides[side].fsm.established_conn();
            id.and_then(|id| self.link_of(side, id))
        };
        match (link(0), link(1)) {
            (Some(a), Some(b)) if a == b => Ok(a),
            (a, b) => Err(format!("sides on different connections: {a:?} {b:?}")),
        }
    }

    fn explain(&self, seed: u64, why: &str) -> String {
        let trace = self.trace.join("\n  ");
        format!("seed {seed}: {why}\n  {trace}")
    }
}

/// Starts both machines (the second at a point the scheduler picks), runs the scheduler from
/// `seed` until nothing is left to deliver, and checks that exactly one session came up and
/// stayed up, the same on both sides.
fn run(seed: u64, configs: [SessionConfig; 2]) -> Result<(), String> {
    let mut world = World::new(configs);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    world.event(0, Event::ManualStart);
    let outcome = world.settle(&mut rng, Some(1)).and_then(|()| {
        for (n, side) in world.sides.iter().enumerate() {
            if !side.downs.is_empty() {
                return Err(format!(
                    "side {n} reported the session down: {:?}",
                    side.downs
                ));
            }
        }
        world.one_session([1, 1])
    });
    outcome.map(|_| ()).map_err(|why| world.explain(seed, &why))
}

fn run_many(what: &str, run: impl Fn(u64) -> Result<(), String>) {
    let failures: Vec<String> = (0..3000u64).filter_map(|seed| run(seed).err()).collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of 3000 orders failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn fsm_simultaneous_open_with_graceful_restart_leaves_one_session_that_stays_up() {
    run_many("graceful restart on both sides", |seed| {
        run(
            seed,
            [config(LOW_ID, true, false), config(HIGH_ID, true, false)],
        )
    });
    run_many("higher identifier starts first", |seed| {
        run(
            seed,
            [config(HIGH_ID, true, false), config(LOW_ID, true, false)],
        )
    });
}

#[test]
fn fsm_simultaneous_open_of_restarting_speakers_leaves_one_session_that_stays_up() {
    // Both advertise the Restart State bit, as two nodes restarted together do: the bit on
    // the second connection's OPEN is no sign that the peer restarted again.
    run_many("both restarting", |seed| {
        run(
            seed,
            [config(LOW_ID, true, true), config(HIGH_ID, true, true)],
        )
    });
}

#[test]
fn fsm_simultaneous_open_without_graceful_restart_leaves_one_session_that_stays_up() {
    run_many("no graceful restart", |seed| {
        run(
            seed,
            [config(LOW_ID, false, false), config(HIGH_ID, false, false)],
        )
    });
    run_many("no graceful restart, higher identifier first", |seed| {
        run(
            seed,
            [config(HIGH_ID, false, false), config(LOW_ID, false, false)],
        )
    });
}

/// Brings a session up, then side 1 restarts the way a node does: its process and its
/// connections vanish without a word on the wire, and the new process (Restart State bit
/// set) connects again. Side 0 must take the new connection as the peer's restart (RFC 4724
/// §4.2) in every order: the old session ends once, keeping the routes stale, and the new
/// one comes up on the new connection.
fn run_restart(seed: u64, restarter: Ipv4Addr, other: Ipv4Addr) -> Result<(), String> {
    let mut world = World::new([config(other, true, false), config(restarter, true, false)]);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    world.event(0, Event::ManualStart);
    let first = world
        .settle(&mut rng, Some(1))
        .and_then(|()| world.one_session([1, 1]));
    let first = first.map_err(|why| world.explain(seed, &why))?;

    world.trace.push("side 1 restarts".into());
    for link in &mut world.links {
        link.open[1] = false;
        link.ids[1] = None;
        link.to[1].clear();
    }
    world.sides[1] = Side {
        fsm: Fsm::new(config(restarter, true, true), world.now),
        ups: Vec::new(),
        downs: Vec::new(),
        idle_holds: 0,
    };
    world.event(1, Event::ManualStart);
    let outcome = world.settle(&mut rng, None).and_then(|()| {
        let downs = &world.sides[0].downs;
        let restarted = matches!(
            downs.as_slice(),
            [Down { reason: DownReason::PeerRestarted, retain, .. }] if !retain.is_empty()
        );
        if !restarted || !world.sides[1].downs.is_empty() {
            return Err(format!("not one restart kept stale: {downs:?}"));
        }
        match world.one_session([2, 1])? {
            link if link == first => Err("still on the old connection".into()),
            _ => Ok(()),
        }
    });
    outcome.map_err(|why| world.explain(seed, &why))
}

#[test]
fn fsm_a_real_peer_restart_is_still_taken_for_one_in_every_order() {
    run_many("the higher identifier restarts", |seed| {
        run_restart(seed, HIGH_ID, LOW_ID)
    });
    run_many("the lower identifier restarts", |seed| {
        run_restart(seed, LOW_ID, HIGH_ID)
    });
}
