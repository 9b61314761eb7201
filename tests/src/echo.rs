//! A name server for reachability tests: a small TCP and UDP server that answers every
//! connection and datagram with a name, and a client that says which name answered.
//!
//! The client's UDP socket is connected, so it takes replies only from the address it sent
//! to: a reply whose source NAT was not undone counts as no answer, as does a TCP reply
//! that reaches the client untranslated (the client's kernel answers it with a reset).

use std::io;
use std::time::Duration;

use crate::netns::command_in;
use crate::process::{ChildGuard, wait_until};

/// Answers every TCP connection and UDP datagram on the port with the given name.
const SERVER: &str = r#"
import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
def tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(2)
            c.recv(16)
            c.sendall(name)
        except OSError:
            pass
        c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
while True:
    _, peer = u.recvfrom(16)
    u.sendto(name, peer)
"#;

/// Makes `tries` requests and prints one line each: the name that answered, or `-`
/// (each request is tried twice before it counts as unanswered).
const CLIENT: &str = r#"
import socket, sys
host, port, proto, tries = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for _ in range(tries):
    answer = "-"
    for attempt in range(2):
        try:
            if proto == "tcp":
                s = socket.create_connection((host, port), timeout=2)
                s.sendall(b"x")
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(1)
                s.connect((host, port))
                s.send(b"x")
            answer = s.recv(16).decode() or "-"
            s.close()
            break
        except OSError:
            pass
    print(answer, flush=True)
"#;

/// The transport a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// One TCP connection per request.
    Tcp,
    /// One UDP datagram and its answer per request.
    Udp,
}

impl Proto {
    /// Both, for tests that check each.
    pub const BOTH: [Proto; 2] = [Proto::Tcp, Proto::Udp];

    fn arg(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

/// Starts a server in namespace `ns` that answers `name` on TCP and UDP port `port` of every
/// IPv4 address, and waits until it answers on `address`. It stops when dropped.
pub fn serve(ns: &str, name: &str, address: &str, port: u16) -> io::Result<ChildGuard> {
    let server = ChildGuard::spawn(
        format!("name server {name} in {ns}"),
        command_in(ns, "python3").args(["-c", SERVER, name, &port.to_string()]),
    )?;
    let up = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        ask(ns, address, port, Proto::Tcp, 1).is_ok_and(|a| a == [name.to_owned()])
    });
    if up {
        Ok(server)
    } else {
        Err(server.failure("answering on its port"))
    }
}

/// Makes `tries` requests from namespace `ns` to `host:port` and returns, for each, the
/// name that answered or `-`.
pub fn ask(ns: &str, host: &str, port: u16, proto: Proto, tries: usize) -> io::Result<Vec<String>> {
    let out = crate::netns::run(command_in(ns, "python3").args([
        "-c",
        CLIENT,
        host,
        &port.to_string(),
        proto.arg(),
        &tries.to_string(),
    ]))?;
    Ok(out.lines().map(str::to_owned).collect())
}
