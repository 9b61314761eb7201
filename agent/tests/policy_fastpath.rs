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
//! FIN_WAIT and CLOSE_WAIT timeouts. A connection's reset is carried and leaves its entry
//! conntrack's timeout for a reset connection; a new connection from the same port meets
//! that entry and is set up at once, or dropped once the rules deny its client; and a stray
//! reset inside the window leaves the connection going (the server's challenge ACK reaches
//! conntrack).

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

/// Makes argv[3] connections to argv[1]:argv[2] one after the other, each sending one
/// byte, reading one and closing with a reset (`SO_LINGER` 0); prints `reset N` with the
/// connections made, or `stalled` and the error. With argv[4], every connection is made
/// from that port, and one not set up within 0.9 s (before a SYN is sent again) stalls.
const RESETTING_CLIENT: &str = r#"
import socket, struct, sys
done = 0
source = int(sys.argv[4]) if len(sys.argv) > 4 else 0
try:
    for _ in range(int(sys.argv[3])):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", source))
        s.settimeout(0.9 if source else 3)
        s.connect((sys.argv[1], int(sys.argv[2])))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"x")
        s.recv(1)
        s.close()
        done += 1
    print("reset", done)
except OSError as e:
    print("stalled", e)
"#;

/// Run in the client's pod: prints `listening`, follows the segments from argv[1]:argv[2]
/// until a second passes without one, then sends the server, from the client's end of
/// that connection, a reset argv[3] bytes past what the server last acknowledged: inside
/// its window but not at its edge, which RFC 5961 answers with a challenge ACK, not by
/// closing. Prints `sent`.
const STRAY_RESET: &str = r#"
import socket, struct, sys
server, port, ahead = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
sniff.settimeout(10)
print("listening", flush=True)
last = None
while True:
    try:
        ip = sniff.recv(65535)[14:]
    except socket.timeout:
        break
    if len(ip) < 40 or ip[9] != 6 or socket.inet_ntoa(ip[12:16]) != server:
        continue
    tcp = ip[(ip[0] & 15) * 4:]
    if struct.unpack("!H", tcp[:2])[0] == port and tcp[13] & 0x10:
        last = (ip, tcp)
        sniff.settimeout(1)
ip, tcp = last
sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
rst = struct.pack("!HHIIBBHHH", dport, sport, (ack + ahead) & 0xffffffff, 0, 5 << 4, 0x04, 65535, 0, 0)
pseudo = ip[16:20] + ip[12:16] + struct.pack("!BBH", 0, 6, len(rst))
rst = rst[:16] + struct.pack("!H", checksum(pseudo + rst)) + rst[18:]
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).sendto(rst, (server, 0))
print("sent", flush=True)
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

/// [`server_and_clients`] with one client, x/client, whose ingress to x/server a policy
/// allows, and the sink listening on [`PORT`] once new connections get through: the lab,
/// the server's namespace and address, the client's namespace and the sink.
fn allowed_client(spec: LabSpec) -> (Lab, String, String, String, Guarded) {
    let (lab, server, server_ip, mut clients) = server_and_clients(spec, &["client"]);
    let client = clients.remove(0);
    let dir = tempfile::tempdir().expect("temporary directory");
    apply_policy(&lab, dir.path(), &allow_from("client"));
    let sink = start_sink(&server, PORT, &[]);
    wait_new_connections(&client, &server_ip, true);
    (lab, server, server_ip, client, sink)
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
    let (lab, server, server_ip, client, _sink) = allowed_client(renewing("polclose"));
    let connect = |count| closing_connections(&lab, &client, &server_ip, CLOSING_CLIENT, count);

    // Short connections, closed by both FINs: conntrack sees the SYN, SYN-ACK, the
    // handshake's ACK and both FINs; the ACKs of the FINs and the data are carried.
    let server_side = start_sink(&server, CLOSING_PORT, &["close", "0"]);
    let connections = 40;
    let (answer, carried, to_stack) = connect(connections);
    assert_eq!(answer, "closed 0");
    drop(server_side);
    eprintln!(
        "{connections} closed connections: {to_stack} packets to the stack, {carried} carried"
    );
    assert!(
        to_stack * 10 <= connections * 55 && carried >= connections * 3,
        "{connections} closed connections: {to_stack} packets left to the stack (5 each: \
         SYN, SYN-ACK, ACK and the two FINs), {carried} carried"
    );
    // Their entries count a closing state down; none is left established.
    let entries = n1_entries(&lab, CLOSING_PORT);
    assert!(!entries.is_empty(), "n1's conntrack saw the connections");
    for (state, left, _, line) in &entries {
        assert!(
            ["LAST_ACK", "TIME_WAIT", "CLOSE"].contains(&state.as_str()) && *left <= 120,
            "a closed connection's entry: {line}"
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
    let (answer, carried, _) = connect(1);
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

/// Runs `script` (one of the short connections' clients) in `client` for `count`
/// connections to the sink on [`CLOSING_PORT`]: its answer, and how many packets of the
/// policed pod n1's fast path carried meanwhile and left to the stack.
fn closing_connections(
    lab: &Lab,
    client: &str,
    server_ip: &str,
    script: &str,
    count: u64,
) -> (String, u64, u64) {
    let before = fast_path(lab, "n1");
    let answer = wren_tests::netns::run(command_in(client, "python3").args([
        "-c",
        script,
        server_ip,
        CLOSING_PORT,
        &count.to_string(),
    ]))
    .expect("the client runs");
    let after = fast_path(lab, "n1");
    (
        answer.trim().to_owned(),
        after.policed_carried - before.policed_carried,
        after.to_stack - before.to_stack,
    )
}

/// n1's conntrack entries of connections to `port`: (state, seconds left, mark), each with
/// its line.
fn n1_entries(lab: &Lab, port: &str) -> Vec<(String, u64, u32, String)> {
    let n1 = lab.node("n1").expect("n1").ns.clone();
    let table = wren_tests::netns::run(command_in(&n1, "cat").arg("/proc/net/nf_conntrack"))
        .expect("n1's conntrack table");
    table
        .lines()
        .filter(|l| l.contains(&format!("dport={port} ")))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mark = fields
                .iter()
                .find_map(|f| f.strip_prefix("mark="))
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            (
                fields[5].to_owned(),
                fields[4].parse().unwrap_or(u64::MAX),
                mark,
                line.to_owned(),
            )
        })
        .collect()
}

/// The client's port for connections made one after the other from the same port.
const SOURCE_PORT: &str = "41234";

/// The reset bit of the default mark mask (`0xffff0000`): its lowest bit.
const RESET_BIT: u32 = 0x0001_0000;

#[test]
fn a_reset_is_carried_and_ends_the_entry_but_a_stray_one_leaves_the_connection_going() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("nft") {
        return;
    }
    let (lab, server, server_ip, client, _sink) = allowed_client(renewing("polrst"));
    // No epoch renewal during the test (a quarter of the shortest of these timeouts): a
    // connection stays stamped with the epoch its client's last packet met.
    for timeout in ["unacknowledged", "fin_wait", "close_wait"] {
        set_n1_tcp_timeout(&lab, timeout, 1200);
    }

    // Connections ended by the client's reset: conntrack sees the SYN, SYN-ACK and the
    // handshake's ACK; the data and the reset are carried, and the reset leaves the entry
    // conntrack's 10 s for a reset connection, with the reset bit in its mark.
    let _closing = start_sink(&server, CLOSING_PORT, &["close", "0"]);
    let connections = 40;
    let (answer, carried, to_stack) =
        closing_connections(&lab, &client, &server_ip, RESETTING_CLIENT, connections);
    assert_eq!(answer, format!("reset {connections}"));
    eprintln!(
        "{connections} reset connections: {to_stack} packets to the stack, {carried} carried"
    );
    assert!(
        to_stack * 10 <= connections * 35 && carried >= connections * 3,
        "{connections} reset connections: {to_stack} packets left to the stack (3 each: SYN, \
         SYN-ACK, ACK; the reset is carried), {carried} carried"
    );
    let entries = n1_entries(&lab, CLOSING_PORT);
    assert!(!entries.is_empty(), "n1's conntrack saw the connections");
    for (_, left, mark, line) in &entries {
        assert!(
            *left <= 10 && mark & RESET_BIT != 0,
            "a reset connection's entry: at most conntrack's 10 s left, the reset bit set: {line}"
        );
    }

    // A new connection on the ports of one a carried reset ended meets its entry, still
    // established for those 10 s: conntrack takes the SYN for a stray and re-synchronises
    // on the SYN-ACK, so the connection is set up at once; and its SYN meets the rules, so
    // once they deny the client it is dropped, the entry notwithstanding.
    let same_port = |count: &str| {
        wren_tests::netns::run(command_in(&client, "python3").args([
            "-c",
            RESETTING_CLIENT,
            &server_ip,
            CLOSING_PORT,
            count,
            SOURCE_PORT,
        ]))
        .expect("resetting client")
        .trim()
        .to_owned()
    };
    assert_eq!(
        same_port("3"),
        "reset 3",
        "connections from one port, one after the other"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    apply_policy(&lab, dir.path(), &allow_from("nobody"));
    wait_new_connections(&client, &server_ip, false);
    let entry = n1_entries(&lab, CLOSING_PORT)
        .into_iter()
        .find(|(.., line)| line.contains(&format!("sport={SOURCE_PORT} ")));
    // (In SYN_RECV: re-synchronised, it saw no ACK of the new connection, whose
    // handshake's ACK and reset were carried.)
    assert!(
        entry.as_ref().is_some_and(|(state, ..)| state != "CLOSE"),
        "the last connection from {SOURCE_PORT} still has its entry, open: {entry:?}"
    );
    assert!(
        same_port("1").starts_with("stalled"),
        "a denied client's SYN is dropped on an entry its last connection left"
    );
    apply_policy(&lab, dir.path(), &allow_from("client"));
    wait_new_connections(&client, &server_ip, true);

    // A stray reset inside the window (conntrack's close timeout now 3 s), into a
    // connection quiet once its data is through: carried, it sets the reset bit, so the
    // server's challenge ACK reaches the stack and keeps the entry established; the
    // connection outlives the 3 s and is carried again once its client speaks.
    set_n1_tcp_timeout(&lab, "close", 3);
    // The agent reads it at its next pass (every second).
    std::thread::sleep(Duration::from_secs(2));
    let mut stream = Stream::open(&client, &server_ip).expect("connected to the sink");
    let mut stray = Guarded(
        command_in(&client, "python3")
            .args(["-c", STRAY_RESET, &server_ip, PORT, "100"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("stray reset"),
    );
    let mut stray_out = BufReader::new(stray.0.stdout.take().expect("its output"));
    let mut line = String::new();
    let _ = stray_out.read_line(&mut line);
    assert_eq!(line.trim(), "listening");
    // The client's data restamps the connection with the epoch in force; the server's
    // acknowledgements tell the stray reset where the window is.
    assert!(stream.send(1), "the stream carries data");
    line.clear();
    let _ = stray_out.read_line(&mut line);
    assert_eq!(line.trim(), "sent");
    std::thread::sleep(Duration::from_millis(500));
    // The earlier connections to the sink have closed.
    let open: Vec<_> = n1_entries(&lab, PORT)
        .into_iter()
        .filter(|(state, ..)| state == "ESTABLISHED")
        .collect();
    let [(_, left, mark, line)] = open.as_slice() else {
        panic!("one open connection to the sink: {open:?}");
    };
    assert!(
        mark & RESET_BIT != 0,
        "the fast path carried the stray reset: {line}"
    );
    assert!(
        *left > 3,
        "the server's challenge ACK went through conntrack: {line}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        stream.try_send(1),
        "ok",
        "the connection outlives conntrack's close timeout"
    );
    let (carried, _) = carried_while(&lab, &mut stream, 16);
    assert!(
        carried >= 50,
        "carried again after the stray reset: {carried}"
    );
}
