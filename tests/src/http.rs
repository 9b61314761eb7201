//! A minimal HTTP GET from inside a network namespace, for the health endpoints of the
//! processes tests and the lab run there.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GETs `path` from `127.0.0.1:<port>` inside namespace `ns`; returns status and body.
pub fn get_in_ns(ns: &str, port: u16, path: &str) -> io::Result<(u16, String)> {
    get_addr_in_ns(ns, SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// GETs `path` from `addr` inside namespace `ns`; returns status and body.
pub fn get_addr_in_ns(ns: &str, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let path = path.to_owned();
    crate::netns::run_in(ns, move || get(addr, &path))?
}

fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:.80}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
