//! Helpers of the speaker tests: speakers on loopback addresses, waiting for conditions, and a
//! TCP relay that plays a peer that freezes, crashes or is unreachable.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wren_bgp::fsm::State;
use wren_bgp::rib::RouteEvent;
use wren_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig, SpeakerHandle, Subscription};

pub const AS: u32 = 64512;
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Upper bound for anything the tests wait for; they finish as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A speaker on 127.0.0.1, router id 10.255.0.`id`.
pub async fn speaker(id: u8, asn: u32) -> SpeakerHandle {
    speaker_with(id, asn, |_| {}).await
}

/// A speaker on 127.0.0.1 with its configuration adjusted by `tweak`.
pub async fn speaker_with(
    id: u8,
    asn: u32,
    tweak: impl FnOnce(&mut SpeakerConfig),
) -> SpeakerHandle {
    let mut config = SpeakerConfig::new(Ipv4Addr::new(10, 255, 0, id), asn);
    config.listen = Some(SocketAddr::new(LOOPBACK, 0));
    config.next_hop_v6 = Some(format!("2001:db8:ffff::{id}").parse().unwrap());
    tweak(&mut config);
    let (handle, _task) = Speaker::start(config).await.expect("speaker starts");
    handle
}

/// A peer entry for `other`, with timers short enough for tests.
pub fn peer_to(other: &SpeakerHandle, asn: u32) -> PeerConfig {
    let listen = other.local_addr().expect("listening");
    let mut peer = PeerConfig::new(listen.ip(), asn);
    peer.port = listen.port();
    peer.hold_time = 9;
    peer.connect_retry = Duration::from_secs(1);
    peer.idle_hold = Duration::from_millis(500);
    peer
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Polls until `check` holds; panics with `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn state_of(speaker: &SpeakerHandle) -> State {
    speaker.peer(LOOPBACK).await.expect("peer configured").state
}

pub async fn established(speaker: &SpeakerHandle) -> bool {
    state_of(speaker).await == State::Established
}

pub async fn has_route(speaker: &SpeakerHandle, prefix: IpNet) -> bool {
    let rib = speaker.loc_rib().await.expect("speaker running");
    rib.iter().any(|(p, _)| *p == prefix)
}

/// Reads subscription batches until one holds `wanted`.
pub async fn expect_event(sub: &mut Subscription, wanted: impl Fn(&RouteEvent) -> bool) {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(batch) = sub.recv().await {
            if batch.iter().any(&wanted) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "expected route event never came");
}

/// A TCP relay in front of a speaker. It can freeze (keep connections open but silent: a hung
/// peer), cut every connection (a crashed peer) and refuse new ones (an unreachable peer).
pub struct Relay {
    pub port: u16,
    frozen: Arc<AtomicBool>,
    accepting: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let accepting = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = watch::channel(0u64);
        let (flag, open) = (frozen.clone(), accepting.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !open.load(Ordering::Acquire) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, flag.clone(), cuts.clone()));
                tokio::spawn(pump(ro, wi, flag.clone(), cuts.clone()));
            }
        });
        Self {
            port,
            frozen,
            accepting,
            cut,
        }
    }

    /// Stops forwarding; connections stay open.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// Closes every relayed connection.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts (and relays) new connections or closes them at once.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Release);
    }
}

/// Peers `a` and `b` so that only `b` connects, through a relay in front of `a`: `a` waits,
/// and cutting the relay ends their one connection. `tweak` adjusts both sides' peer
/// settings alike (a hold time, say).
pub async fn peer_through_relay(
    a: &SpeakerHandle,
    b: &SpeakerHandle,
    tweak: impl Fn(&mut PeerConfig),
) -> Relay {
    let relay = Relay::start(a.local_addr().unwrap()).await;
    let mut to_b = peer_to(b, AS);
    to_b.passive = true;
    tweak(&mut to_b);
    let mut to_a = peer_to(a, AS);
    to_a.port = relay.port;
    tweak(&mut to_a);
    a.add_peer(to_b).await.unwrap();
    b.add_peer(to_a).await.unwrap();
    relay
}

/// A TCP gate in front of a speaker: it takes connections but passes none on until opened,
/// then passes every one on at once. Two gates opened together make two speakers' connections
/// to each other arrive at the same moment, OPENs already on their way, as when two nodes
/// connect to each other at once.
pub struct Gate {
    pub port: u16,
    open: watch::Sender<bool>,
}

impl Gate {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, opened) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut opened = opened.clone();
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let frozen = Arc::new(AtomicBool::new(false));
                    let (_cut, cuts) = watch::channel(0u64);
                    let forward = pump(ri, wo, frozen.clone(), cuts.clone());
                    let backward = pump(ro, wi, frozen, cuts);
                    tokio::join!(forward, backward);
                });
            }
        });
        Self { port, open }
    }

    /// Passes on the connections held so far and every later one.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    mut cuts: watch::Receiver<u64>,
) {
    cuts.mark_unchanged();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            _ = cuts.changed() => return,
            read = from.read(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if frozen.load(Ordering::Acquire) {
                    // Hold both sockets open and silent, as a hung process would.
                    let _ = cuts.changed().await;
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
