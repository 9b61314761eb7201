//! TCP sockets for BGP: the listener, outgoing connections, TCP MD5 signatures (RFC 2385) and
//! the TTL security hack (GTSM, RFC 5082). Linux only.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Longest MD5 key Linux accepts (TCP_MD5SIG_MAXKEYLEN).
pub const MD5_MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of <linux/tcp.h>.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// Installs (`Some`) or removes (`None`) the MD5 key for connections with `peer` on a socket.
/// On a listening socket the key applies to every connection it accepts from that address.
pub fn set_md5(socket: SockRef<'_>, peer: IpAddr, key: Option<&[u8]>) -> io::Result<()> {
    let key = key.unwrap_or_default();
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP MD5 password longer than 80 octets",
        ));
    }
    let fd = socket.as_raw_fd();
    // An IPv4 peer reaches a dual-stack IPv6 socket as an IPv4-mapped address.
    let peer = match (socket.domain()?, peer) {
        (Domain::IPV6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => peer,
    };
    let addr = socket2::SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` holds a valid socket address of `addr.len()` bytes, which is at most the
    // size of sockaddr_storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            std::ptr::addr_of_mut!(sig.addr).cast::<u8>(),
            addr.len() as usize,
        );
    }
    sig.key_len = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a properly initialised tcp_md5sig and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            std::ptr::addr_of!(sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // Removing a key that was never set is not an error worth reporting.
    if key.is_empty() && error.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(error)
}

/// GTSM (RFC 5082): send with the maximum TTL and drop packets that crossed more than `hops`.
pub fn set_ttl_security(socket: SockRef<'_>, ipv6: bool, hops: u8) -> io::Result<()> {
    let min = 256 - u32::from(hops.max(1));
    let (level, option) = if ipv6 {
        socket.set_unicast_hops_v6(255)?;
        (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT)
    } else {
        socket.set_ttl_v4(255)?;
        (libc::IPPROTO_IP, libc::IP_MINTTL)
    };
    set_int(&*socket, level, option, min as libc::c_int)
}

/// Sets a socket option whose value is a C `int`.
fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket, and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The TTL (IPv4) or hop limit (IPv6) the SYN of an accepted connection arrived with, from the
/// copy the listener keeps ([`listen`]); the copy is handed out once. `None` when there is
/// none (a listener made elsewhere) or it is not an IP header.
pub fn syn_hops(socket: SockRef<'_>) -> io::Result<Option<u8>> {
    // The saved SYN is the IP header and the TCP header, options included: under 200 bytes.
    let mut saved = [0u8; 256];
    let mut len = saved.len() as libc::socklen_t;
    // SAFETY: a valid socket, a buffer of `len` bytes, and `len` the kernel updates.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            saved.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hops_of_ip_header(&saved[..(len as usize).min(saved.len())]))
}

/// The TTL of an IPv4 header or the hop limit of an IPv6 one.
fn hops_of_ip_header(header: &[u8]) -> Option<u8> {
    match header.first()? >> 4 {
        4 => header.get(8).copied(),
        6 => header.get(7).copied(),
        _ => None,
    }
}

/// Whether a packet that arrived with `hops` left passes GTSM for `hops_allowed` hops.
pub fn gtsm_admits(hops: u8, hops_allowed: u8) -> bool {
    u32::from(hops) >= 256 - u32::from(hops_allowed.max(1))
}

/// Binds the BGP listener. An IPv6 wildcard address also accepts IPv4 connections. The
/// kernel keeps each accepted connection's SYN for [`syn_hops`], since the options GTSM sets
/// on an accepted socket come too late for the handshake and for what the peer sent before.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    set_int(&socket, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, 1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Settings of one outgoing connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The peer.
    pub remote: SocketAddr,
    /// Our source address.
    pub local: Option<IpAddr>,
    /// MD5 key.
    pub password: Option<String>,
    /// GTSM hop count.
    pub ttl_security: Option<u8>,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Opens a connection to a peer with its socket options set before the SYN leaves.
pub async fn connect(options: &ConnectOptions) -> io::Result<TcpStream> {
    let ipv6 = options.remote.is_ipv6();
    let socket = if ipv6 {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(key) = &options.password {
        set_md5(
            SockRef::from(&socket),
            options.remote.ip(),
            Some(key.as_bytes()),
        )?;
    }
    if let Some(hops) = options.ttl_security {
        set_ttl_security(SockRef::from(&socket), ipv6, hops)?;
    }
    if let Some(local) = options.local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    match tokio::time::timeout(options.timeout, socket.connect(options.remote)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hops_come_from_either_family_s_header() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[8] = 254;
        assert_eq!(hops_of_ip_header(&v4), Some(254));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[7] = 255;
        assert_eq!(hops_of_ip_header(&v6), Some(255));
        assert_eq!(hops_of_ip_header(&[0x45, 0, 0]), None, "cut short");
        assert_eq!(hops_of_ip_header(&[]), None);
        assert_eq!(hops_of_ip_header(&[0x20; 40]), None, "not IP");
    }

    #[test]
    fn gtsm_admits_what_crossed_at_most_the_hops_allowed() {
        assert!(gtsm_admits(255, 1));
        assert!(!gtsm_admits(254, 1));
        assert!(
            !gtsm_admits(1, 1),
            "a router beyond the link sending with TTL 1"
        );
        assert!(gtsm_admits(254, 2));
        assert!(!gtsm_admits(253, 2));
        assert!(
            gtsm_admits(255, 0),
            "0 hops is taken as 1, as for the socket"
        );
    }

    /// The listener keeps the SYN, and its TTL reads back on the accepted socket once.
    #[tokio::test]
    async fn an_accepted_connection_s_syn_ttl_reads_back() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpSocket::new_v4().unwrap();
        SockRef::from(&client).set_ttl_v4(200).unwrap();
        let (connected, accepted) = tokio::join!(client.connect(addr), listener.accept());
        let (_client, (stream, _)) = (connected.unwrap(), accepted.unwrap());
        assert_eq!(syn_hops(SockRef::from(&stream)).unwrap(), Some(200));
        // Handed out once: the kernel frees its copy.
        assert_eq!(syn_hops(SockRef::from(&stream)).unwrap(), None);
    }
}
