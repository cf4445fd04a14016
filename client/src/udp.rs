//! The UDP socket under every QUIC endpoint of paycore: the client's and the node's.
//!
//! Why not quinn's own `Endpoint::client` / `Endpoint::server`: they keep the kernel's default
//! socket buffers (212,992 bytes on this machine). A full request (8189 commands, about 570 KB)
//! arrives as ~400 datagrams at once and the default buffer holds ~150: the kernel dropped the
//! rest (`RcvbufErrors` in `/proc/net/snmp`: ~4,900 datagrams in 8 s of full batches, ~75 in
//! 15 s of the 200,000/s open loop), and each loss cost QUIC a recovery round — one probe
//! timeout includes the peer's 25 ms maximum ACK delay — and a smaller congestion window: a
//! full-batch request took ~40 ms instead of ~12 every few tenths of a second.

use std::io;
use std::net::SocketAddr;
use std::sync::Once;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer asked for each endpoint's socket. Linux grants at most
/// `net.core.rmem_max` / `wmem_max` (4 MiB on this machine); less is logged once.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] buffers (as far as the kernel allows),
/// dual-stack when `addr` is IPv6.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6()
        && let Err(error) = socket.set_only_v6(false)
    {
        tracing::debug!(%error, "UDP socket stays IPv6-only");
    }
    // Best effort: a smaller buffer still works, with datagram loss under full batches.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    if let Ok(granted) = socket.recv_buffer_size()
        && granted < UDP_BUFFER_BYTES
    {
        static SMALL: Once = Once::new();
        SMALL.call_once(|| {
            tracing::warn!(
                granted,
                asked = UDP_BUFFER_BYTES,
                "UDP receive buffer smaller than asked: full batches may lose datagrams and wait \
                 for QUIC loss recovery; raise net.core.rmem_max"
            );
        });
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on a [`bind_udp`] socket: a server when `server` is given, else a client
/// only. Needs a tokio runtime.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime found"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        bind_udp(addr)?,
        runtime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffers are raised above the kernel's default (212,992 B here), as far as
    /// `net.core.rmem_max` allows.
    #[test]
    fn sockets_get_bigger_buffers_than_the_default() {
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").expect("plain socket");
        let default = socket2::SockRef::from(&plain)
            .recv_buffer_size()
            .expect("default size");
        let limit = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let socket = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("socket");
        let granted = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("granted size");
        // Linux doubles what it grants (bookkeeping), capped at twice rmem_max.
        assert!(granted >= default, "{granted} < {default}");
        if limit > default / 2 {
            assert!(
                granted > default,
                "{granted} not above the default {default}"
            );
        }
        assert!(socket.local_addr().expect("bound").port() != 0);
    }
}
