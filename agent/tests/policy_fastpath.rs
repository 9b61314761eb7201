//! Network policy at fast-path speed, on real traffic: a TCP connection a policy allows to
//! an isolated pod is carried by the fast path once conntrack saw it set up (the node's
//! fast-path counters grow with the bytes, its stack hand-offs do not), a change that
//! takes the allowance away stops the open connection at its next packet, and allowing it
//! again lets a new connection through, carried again. Connections the fast path carried
//! before their pod was first isolated (conntrack never saw them) are reset at their next
//! packet when it comes from the isolated server, judged as the client's when it comes from
//! the client (the denied one reset, the allowed one going on), and an allowed client
//! reconnects and is carried past conntrack's established timeout. A connection's close
//! goes through conntrack but its bare ACKs ride the fast path, its entry left counting
//! down a closing state, and a half-closed connection is carried past conntrack's
//! FIN_WAIT and CLOSE_WAIT timeouts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use wren_tests::lab::{self, FastPathReport, Lab, LabSpec};
use wren_tests::netns::command_in;

/// The sink's port.
const PORT: &str = "7070";
/// The port of a second sink, one that never speaks first.
const QUIET_PORT: &str = "7071";

/// Takes every connection on port argv[1] and answers one byte `k` per MiB received;
/// with the argument `tick` after it, also sends a byte `t` on every connection every
/// 200 ms. With `close S` after it instead, reads one byte and answers one, reads until
/// the client's FIN, then sends a byte `t` every 100 ms for S seconds and closes.
const SINK: &str = r#"
import socket, sys, threading, time
def tick(c):
    try:
        while True:
            time.sleep(0.2)
            c.sendall(b"t")
    except OSError:
        pass
def close(c, seconds):
    try:
        c.recv(1)
        c.sendall(b"x")
        while c.recv(4096):
            pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.1)
            c.sendall(b"t")
    except OSError:
        pass
    c.close()
def serve(c):
    if sys.argv[2:3] == ["close"]:
        return close(c, float(sys.argv[3]))
    if sys.argv[2:] == ["tick"]:
        threading.Thread(target=tick, args=(c,), daemon=True).start()
    got = 0
    try:
        while True:
            data = c.recv(262144)
            if not data:
                break
            acks = (got + len(data)) // 1048576 - got // 1048576
            got += len(data)
            if acks:
                c.sendall(b"k" * acks)
    except OSError:
        pass
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("up", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Connects to argv[1]:argv[2]; for every line N on stdin sends N MiB and waits for the N
/// acknowledgements (bytes `k`), printing `ok`, or `stalled` and the error when 3 s pass
/// without progress or the connection fails.
const STREAMER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(3)
chunk = b"x" * 1048576
print("connected", flush=True)
for line in sys.stdin:
    n = int(line)
    try:
        for _ in range(n):
            s.sendall(chunk)
        got = 0
        while got < n:
            data = s.recv(4096)
            if not data:
                raise OSError("closed")
            got += data.count(b"k")
        print("ok", flush=True)
    except OSError as e:
        print("stalled", e, flush=True)
        break
"#;

/// The port of a sink that closes (`close`).
const CLOSING_PORT: &str = "7072";

/// Makes argv[3] connections to argv[1]:argv[2] one after the other, each sending one
/// byte, reading one, closing its side (FIN) and reading until the server's FIN; prints
/// `closed N` with the bytes read after its own FIN, summed, or `stalled` and the error.
const CLOSING_CLIENT: &str = r#"
import socket, sys
total = 0
try:
    for _ in range(int(sys.argv[3])):
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        s.sendall(b"x")
        s.recv(1)
        s.shutdown(socket.SHUT_WR)
        while True:
            data = s.recv(4096)
            if not data:
                break
            total += len(data)
        s.close()
    print("closed", total)
except OSError as e:
    print("stalled", e)
"#;

/// Allows x/server's ingress from pods labelled `app` (the policy isolates x/server).
fn allow_from(app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}]}}]\n"
    )
}

/// A child process killed and reaped when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One long-lived connection from the client pod, sending on demand.
struct Stream {
    _child: Guarded,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Stream {
    /// A connection to the sink on [`PORT`].
    fn open(netns: &str, server_ip: &str) -> Option<Self> {
        Self::open_to(netns, server_ip, PORT)
    }

    fn open_to(netns: &str, server_ip: &str, port: &str) -> Option<Self> {
        let mut child = Guarded(
            command_in(netns, "python3")
                .args(["-c", STREAMER, server_ip, port])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("streamer started"),
        );
        let (stdin, stdout) = (child.0.stdin.take()?, child.0.stdout.take()?);
        let mut stream = Self {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        (stream.line() == "connected").then_some(stream)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim().to_owned()
    }

    /// Sends `mib` MiB; whether all of it was taken and acknowledged.
    fn send(&mut self, mib: u32) -> bool {
        self.try_send(mib) == "ok"
    }

    /// Sends `mib` MiB: `ok`, or `stalled` and why.
    fn try_send(&mut self, mib: u32) -> String {
        if writeln!(self.stdin, "{mib}")
            .and_then(|()| self.stdin.flush())
            .is_err()
        {
            return "stalled: the streamer is gone".to_owned();
        }
        self.line()
    }
}

/// Opens new connections until one carries a MiB (`want`) or none can (`!want`).
fn wait_new_connections(client: &str, server_ip: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let works = Stream::open(client, server_ip).is_some_and(|mut s| s.send(1));
        if works == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still {}",
            if want { "refused" } else { "allowed" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fast_path(lab: &Lab, node: &str) -> FastPathReport {
    let report = lab.fast_path(node).expect("fast path status");
    assert!(report.on, "{node}'s fast path is on");
    report
}

#[test]
fn allowed_connections_ride_the_fast_path_until_a_change_denies_them() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("nft") {
        return;
    }
    let (lab, server, server_ip, clients) =
        server_and_clients(LabSpec::new("polfast", 2), &["client"]);
    let client = &clients[0];
    let _sink = start_sink(&server, PORT, &[]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let apply = |yaml: &str| apply_policy(&lab, dir.path(), yaml);

    // (1) Allowed: set up through the stack, then carried, with next to nothing left to
    // the stack while the bytes flow.
    apply(&allow_from("client"));
    wait_new_connections(client, &server_ip, true);
    let mut stream = Stream::open(client, &server_ip).expect("connected while allowed");
    assert!(stream.send(1), "the allowed connection carries data");
    let (carried, to_stack) = carried_while(&lab, &mut stream, 32);
    assert!(
        carried >= 100 && to_stack * 20 < carried,
        "n1 carried {carried} packets of the policed pod and left {to_stack} to the stack \
         while 32 MiB flowed"
    );

    // A change that still allows it (a second policy for another client): the
    // connection's next packet meets the new rules on the stack, and it is carried again.
    apply(&allow_from("other").replace("name: server", "name: other"));
    wait_new_connections(client, &server_ip, true);
    let (carried, _) = carried_while(&lab, &mut stream, 32);
    assert!(carried >= 100, "carried again after the change: {carried}");
    lab.wren_cli(&["policy", "rm", "x/other"])
        .expect("policy removed");

    // (2) A change that denies it: the open connection stops at its next packet.
    apply(&allow_from("nobody"));
    wait_new_connections(client, &server_ip, false);
    assert!(
        !stream.send(1),
        "the open connection stops once the rules no longer allow it"
    );
    drop(stream);

    // (3) Allowed again: a new connection gets through and is carried.
    apply(&allow_from("client"));
    wait_new_connections(client, &server_ip, true);
    let mut stream = Stream::open(client, &server_ip).expect("connected once allowed again");
    assert!(stream.send(1), "the new connection carries data");
    let (carried, _) = carried_while(&lab, &mut stream, 16);
    assert!(carried >= 50, "the new connection is carried: {carried}");
}

/// A lab of `spec` (its pods left out) with the pod x/server (`app=server`) on n1 and
/// x/`name` (`app=name`) on n2 for each of `clients`: the lab, the server's namespace and
/// address, and the clients' namespaces.
fn server_and_clients(mut spec: LabSpec, clients: &[&str]) -> (Lab, String, String, Vec<String>) {
    spec.pods_per_node = 0;
    let mut lab = Lab::up(spec).expect("lab up");
    let (server, server_ip) = lab
        .add_labelled_k8s_pod("n1", "x", "server", &["app=server"])
        .expect("server pod");
    let clients = clients
        .iter()
        .map(|name| {
            lab.add_labelled_k8s_pod("n2", "x", name, &[&format!("app={name}")])
                .expect("client pod")
                .0
        })
        .collect();
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("pods reach each other");
    (lab, server, server_ip.to_string(), clients)
}

/// A two-node lab whose agents pass every second, so that they renew their epochs as
/// often as the short conntrack timeouts a test sets ask.
fn renewing(name: &str) -> LabSpec {
    let mut spec = LabSpec::new(name, 2);
    spec.reconcile_interval = Some(Duration::from_secs(1));
    spec
}

/// Sets conntrack's TCP `timeout` (`established`, `close_wait`, …) in n1's namespace.
fn set_n1_tcp_timeout(lab: &Lab, timeout: &str, seconds: u32) {
    let n1 = lab.node("n1").expect("n1").ns.clone();
    let set = command_in(&n1, "sysctl")
        .args([
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_{timeout}={seconds}"),
        ])
        .status()
        .expect("sysctl runs");
    assert!(set.success(), "conntrack's {timeout} timeout set in n1");
}

/// The sink, listening in `pod` on `port`, in `mode` ([`SINK`]'s further arguments).
fn start_sink(pod: &str, port: &str, mode: &[&str]) -> Guarded {
    let mut sink = Guarded(
        command_in(pod, "python3")
            .args(["-c", SINK, port])
            .args(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("sink"),
    );
    let mut up = String::new();
    if let Some(out) = sink.0.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut up);
    }
    assert_eq!(up.trim(), "up", "the sink listens on {port}");
    sink
}

/// `wren policy apply` of `yaml`, through a file in `dir`.
fn apply_policy(lab: &Lab, dir: &std::path::Path, yaml: &str) {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, yaml).expect("policy written");
    lab.wren_cli(&["policy", "apply", "-f", file.to_str().unwrap_or_default()])
        .expect("policy applied");
}

/// A node's figure of a metric without labels, 0 when absent.
fn metric(lab: &Lab, node: &str, name: &str) -> u64 {
    let text = lab.metrics(node).expect("metrics scraped");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn connections_carried_before_the_first_isolation_are_reset_unless_judged_from_their_opener() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("nft") {
        return;
    }
    let (lab, server, server_ip, clients) =
        server_and_clients(renewing("polpick"), &["client", "friend"]);
    let (client, friend) = (&clients[0], &clients[1]);
    // conntrack forgets an established connection 8 s after the last packet it saw: the
    // agent renews its epoch every 2 s, so each carried connection shows it one packet
    // as often.
    set_n1_tcp_timeout(&lab, "established", 8);
    // On PORT the server speaks too, so the first packet of a connection that n1's
    // conntrack sees once the pod is isolated is the server's: picked up from it, the
    // client's packets would be replies, past the ingress rules. On QUIET_PORT the
    // clients speak first.
    let _sink = start_sink(&server, PORT, &["tick"]);
    let _quiet = start_sink(&server, QUIET_PORT, &[]);
    let dir = tempfile::tempdir().expect("temporary directory");

    // Before any policy: every connection is the fast path's, unseen by conntrack.
    let open = |pod: &str, port: &str| {
        let mut stream = Stream::open_to(pod, &server_ip, port).expect("connected");
        assert!(stream.send(1), "{pod} sends to {port} before any policy");
        stream
    };
    let mut denied = open(client, PORT);
    let mut allowed = open(friend, PORT);
    let mut denied_quiet = open(client, QUIET_PORT);
    let mut allowed_quiet = open(friend, QUIET_PORT);
    let resets_before = metric(&lab, "n1", "wren_policy_denied_connections_total");

    apply_policy(&lab, dir.path(), &allow_from("friend"));
    wait_new_connections(client, &server_ip, false);
    // The server's packet came first: conntrack cannot tell who opened the connection, so
    // both are reset at their next packet, the denied and the allowed one.
    for (stream, which) in [(&mut denied, "denied"), (&mut allowed, "allowed")] {
        let answer = stream.try_send(1);
        assert!(
            answer.contains("reset"),
            "the {which} connection opened before the isolation, met from the server's \
             side, is reset: {answer}"
        );
    }
    // The client's packet came first: judged by the ingress rules as the opener's. The
    // denied connection is reset, the allowed one goes on.
    let answer = denied_quiet.try_send(1);
    assert!(
        answer.contains("reset"),
        "the denied connection met from the client's side is reset: {answer}"
    );
    assert_eq!(
        allowed_quiet.try_send(1),
        "ok",
        "the allowed connection met from the client's side goes on"
    );
    let resets = metric(&lab, "n1", "wren_policy_denied_connections_total") - resets_before;
    assert!(resets >= 3, "the resets are counted as denied: {resets}");
    wait_new_connections(friend, &server_ip, true);
    let mut allowed = Stream::open(friend, &server_ip).expect("the friend reconnects");

    // Carried for longer than conntrack keeps an entry it sees nothing of: the renewed
    // epochs keep the connection's entry fresh, so it is never met mid-stream.
    let before = fast_path(&lab, "n1");
    let until = Instant::now() + Duration::from_secs(14);
    while Instant::now() < until {
        let answer = allowed.try_send(2);
        assert_eq!(answer, "ok", "the reconnected connection goes on");
        std::thread::sleep(Duration::from_millis(300));
    }
    let carried = fast_path(&lab, "n1").policed_carried - before.policed_carried;
    assert!(
        carried >= 100,
        "the reconnected connection is carried: {carried}"
    );
}

/// Sends `mib` MiB over `stream`; how many packets n1's fast path carried for its policed
/// pod meanwhile, and how many it left to the stack.
fn carried_while(lab: &Lab, stream: &mut Stream, mib: u32) -> (u64, u64) {
    let before = fast_path(lab, "n1");
    assert!(stream.send(mib), "{mib} MiB over the allowed connection");
    let after = fast_path(lab, "n1");
    (
        after.policed_carried - before.policed_carried,
        after.to_stack - before.to_stack,
    )
}

#[test]
fn a_close_goes_through_conntrack_with_its_acks_carried_and_a_half_close_lives_on() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("nft") {
        return;
    }
    let (lab, server, server_ip, clients) = server_and_clients(renewing("polclose"), &["client"]);
    let client = &clients[0];
    let dir = tempfile::tempdir().expect("temporary directory");
    apply_policy(&lab, dir.path(), &allow_from("client"));
    let _sink = start_sink(&server, PORT, &[]);
    wait_new_connections(client, &server_ip, true);
    let connect = |count: &str| {
        wren_tests::netns::run(command_in(client, "python3").args([
            "-c",
            CLOSING_CLIENT,
            &server_ip,
            CLOSING_PORT,
            count,
        ]))
        .expect("closing client")
        .trim()
        .to_owned()
    };

    // Short connections, closed by both FINs: conntrack sees the SYN, SYN-ACK, the
    // handshake's ACK and both FINs; the ACKs of the FINs and the data are carried.
    let server_side = start_sink(&server, CLOSING_PORT, &["close", "0"]);
    let connections = 40;
    let before = fast_path(&lab, "n1");
    assert_eq!(connect(&connections.to_string()), "closed 0");
    let after = fast_path(&lab, "n1");
    drop(server_side);
    let to_stack = after.to_stack - before.to_stack;
    let carried = after.policed_carried - before.policed_carried;
    eprintln!(
        "{connections} closed connections: {to_stack} packets to the stack, {carried} carried"
    );
    assert!(
        to_stack * 10 <= connections * 55 && carried >= connections * 3,
        "{connections} closed connections: {to_stack} packets left to the stack (5 each: \
         SYN, SYN-ACK, ACK and the two FINs), {carried} carried"
    );
    // Their entries count a closing state down; none is left established.
    let n1 = lab.node("n1").expect("n1").ns.clone();
    let table = wren_tests::netns::run(command_in(&n1, "cat").arg("/proc/net/nf_conntrack"))
        .expect("n1's conntrack table");
    let entries: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(&format!("dport={CLOSING_PORT} ")))
        .collect();
    assert!(!entries.is_empty(), "n1's conntrack saw the connections");
    for entry in &entries {
        let fields: Vec<&str> = entry.split_whitespace().collect();
        let (left, state) = (fields[4].parse::<u64>().unwrap_or(u64::MAX), fields[5]);
        assert!(
            ["LAST_ACK", "TIME_WAIT", "CLOSE"].contains(&state) && left <= 120,
            "a closed connection's entry: {entry}"
        );
    }

    // A half-closed connection: the client's FIN, then the server streaming for 12 s.
    // conntrack counts FIN_WAIT and CLOSE_WAIT down from the last packet it saw; with
    // them at 4 s, the renewals (every second) keep the entry fresh, so the server's
    // packets are never met mid-stream and reset.
    for timeout in ["fin_wait", "close_wait"] {
        set_n1_tcp_timeout(&lab, timeout, 4);
    }
    // The agent reads the timeouts at its next pass.
    std::thread::sleep(Duration::from_secs(2));
    let _server_side = start_sink(&server, CLOSING_PORT, &["close", "12"]);
    let before = fast_path(&lab, "n1");
    let answer = connect("1");
    let carried = fast_path(&lab, "n1").policed_carried - before.policed_carried;
    let streamed: u64 = answer
        .strip_prefix("closed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        streamed >= 80,
        "the half-closed connection streams to its end: {answer}"
    );
    assert!(
        carried >= 40,
        "the half-closed connection is carried: {carried}"
    );
}
