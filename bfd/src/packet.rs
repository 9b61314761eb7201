//! The BFD Control packet (RFC 5880 §4.1), without authentication.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       My Discriminator                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Your Discriminator                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Desired Min TX Interval                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   Required Min RX Interval                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Required Min Echo RX Interval                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`ControlPacket::decode`] applies the checks of RFC 5880 §6.8.6 that need no session:
//! version, length, detect multiplier, the Multipoint bit, My Discriminator, and Your
//! Discriminator against the State field. wren runs no authentication, so a packet with the
//! A bit set is discarded as §6.8.6 says for a session without authentication. Choosing the
//! session (by Your Discriminator, or by addresses when it is zero) is the endpoint's job.

use std::time::Duration;

/// Length of a Control packet without an authentication section.
pub const PACKET_LEN: usize = 24;

/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;

/// Session states as carried in the State field (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Held down by its operator; no detection runs.
    AdminDown = 0,
    /// Down, or never up.
    Down = 1,
    /// The remote system is heard; waiting for it to hear us.
    Init = 2,
    /// Both systems hear each other.
    Up = 3,
}

impl State {
    /// The state the two bits stand for.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// The state's name as FRR and BIRD print it.
    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Diagnostic codes (RFC 5880 §4.1): why the sender's session last changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    /// No diagnostic.
    None,
    /// Control Detection Time Expired: the remote system fell silent.
    ControlDetectionTimeExpired,
    /// Echo Function Failed.
    EchoFunctionFailed,
    /// Neighbor Signaled Session Down.
    NeighborSignaledSessionDown,
    /// Forwarding Plane Reset.
    ForwardingPlaneReset,
    /// Path Down.
    PathDown,
    /// Concatenated Path Down.
    ConcatenatedPathDown,
    /// Administratively Down.
    AdministrativelyDown,
    /// Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// A value RFC 5880 reserves (9–31), kept as received.
    Reserved(u8),
}

impl Diagnostic {
    /// The code for the five-bit field value.
    pub fn from_code(code: u8) -> Self {
        match code & 0x1f {
            0 => Diagnostic::None,
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFunctionFailed,
            3 => Diagnostic::NeighborSignaledSessionDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            other => Diagnostic::Reserved(other),
        }
    }

    /// The five-bit field value.
    pub fn code(self) -> u8 {
        match self {
            Diagnostic::None => 0,
            Diagnostic::ControlDetectionTimeExpired => 1,
            Diagnostic::EchoFunctionFailed => 2,
            Diagnostic::NeighborSignaledSessionDown => 3,
            Diagnostic::ForwardingPlaneReset => 4,
            Diagnostic::PathDown => 5,
            Diagnostic::ConcatenatedPathDown => 6,
            Diagnostic::AdministrativelyDown => 7,
            Diagnostic::ReverseConcatenatedPathDown => 8,
            Diagnostic::Reserved(code) => code & 0x1f,
        }
    }

    /// The diagnostic's name as RFC 5880 writes it.
    pub fn name(self) -> &'static str {
        match self {
            Diagnostic::None => "No Diagnostic",
            Diagnostic::ControlDetectionTimeExpired => "Control Detection Time Expired",
            Diagnostic::EchoFunctionFailed => "Echo Function Failed",
            Diagnostic::NeighborSignaledSessionDown => "Neighbor Signaled Session Down",
            Diagnostic::ForwardingPlaneReset => "Forwarding Plane Reset",
            Diagnostic::PathDown => "Path Down",
            Diagnostic::ConcatenatedPathDown => "Concatenated Path Down",
            Diagnostic::AdministrativelyDown => "Administratively Down",
            Diagnostic::ReverseConcatenatedPathDown => "Reverse Concatenated Path Down",
            Diagnostic::Reserved(_) => "Reserved",
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diagnostic::Reserved(code) => write!(f, "Reserved ({code})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a received packet is discarded (RFC 5880 §6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer octets than the mandatory section.
    #[error("packet of {0} octets is shorter than the 24-octet mandatory section")]
    Truncated(usize),
    /// The Version field is not 1.
    #[error("version {0} is not 1")]
    Version(u8),
    /// The Length field is below the minimum (24, or 26 with authentication).
    #[error("length field {0} is below the minimum")]
    LengthTooSmall(u8),
    /// The Length field is larger than the packet received.
    #[error("length field {field} exceeds the {received} octets received")]
    LengthBeyondPayload {
        /// The Length field.
        field: u8,
        /// Octets in the UDP payload.
        received: usize,
    },
    /// Detect Mult is zero.
    #[error("detect multiplier is zero")]
    ZeroDetectMult,
    /// The Multipoint bit is set.
    #[error("multipoint bit is set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("my discriminator is zero")]
    ZeroMyDiscriminator,
    /// Your Discriminator is zero in a packet whose state is neither Down nor AdminDown.
    #[error("your discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
    /// The Authentication Present bit is set; wren runs no authentication.
    #[error("authentication present but not configured")]
    Authentication,
}

/// A BFD Control packet. Intervals are carried in microseconds, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    /// Why the sender's session last changed state.
    pub diagnostic: Diagnostic,
    /// The sender's session state.
    pub state: State,
    /// Poll: the sender asks for a packet with Final set (a parameter change or a check).
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub final_: bool,
    /// Control Plane Independent: BFD runs apart from the control plane.
    pub control_plane_independent: bool,
    /// Authentication Present.
    pub authentication: bool,
    /// Demand mode is wanted by the sender.
    pub demand: bool,
    /// Detect Mult: the sender's detection time is this many of its negotiated receive
    /// intervals.
    pub detect_mult: u8,
    /// The sender's discriminator of the session.
    pub my_discriminator: u32,
    /// The receiver's discriminator as the sender knows it, 0 when unknown.
    pub your_discriminator: u32,
    /// Shortest interval, in microseconds, at which the sender wants to transmit.
    pub desired_min_tx: u32,
    /// Shortest interval, in microseconds, between packets the sender can receive.
    pub required_min_rx: u32,
    /// Shortest interval between Echo packets the sender can receive; 0: no Echo function.
    pub required_min_echo_rx: u32,
}

impl ControlPacket {
    /// Reads a packet from a UDP payload, applying the checks of RFC 5880 §6.8.6 that need no
    /// session. Octets after the Length field are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, PacketError> {
        let Some(header) = bytes.get(..PACKET_LEN) else {
            return Err(PacketError::Truncated(bytes.len()));
        };
        let version = header[0] >> 5;
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let flags = header[1];
        let authentication = flags & 0x04 != 0;
        let length = header[3];
        let minimum = if authentication { 26 } else { 24 };
        if usize::from(length) < minimum {
            return Err(PacketError::LengthTooSmall(length));
        }
        if usize::from(length) > bytes.len() {
            return Err(PacketError::LengthBeyondPayload {
                field: length,
                received: bytes.len(),
            });
        }
        let word = |at: usize| {
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let packet = ControlPacket {
            diagnostic: Diagnostic::from_code(header[0]),
            state: State::from_bits(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            control_plane_independent: flags & 0x08 != 0,
            authentication,
            demand: flags & 0x02 != 0,
            detect_mult: header[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        };
        if packet.detect_mult == 0 {
            return Err(PacketError::ZeroDetectMult);
        }
        if flags & 0x01 != 0 {
            return Err(PacketError::Multipoint);
        }
        if packet.my_discriminator == 0 {
            return Err(PacketError::ZeroMyDiscriminator);
        }
        if packet.your_discriminator == 0 && !matches!(packet.state, State::Down | State::AdminDown)
        {
            return Err(PacketError::ZeroYourDiscriminator(packet.state));
        }
        if authentication {
            return Err(PacketError::Authentication);
        }
        Ok(packet)
    }

    /// The packet's 24 octets (Length 24, no authentication section).
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut out = [0u8; PACKET_LEN];
        out[0] = (VERSION << 5) | self.diagnostic.code();
        out[1] = ((self.state as u8) << 6)
            | u8::from(self.poll) << 5
            | u8::from(self.final_) << 4
            | u8::from(self.control_plane_independent) << 3
            | u8::from(self.authentication) << 2
            | u8::from(self.demand) << 1;
        out[2] = self.detect_mult;
        out[3] = PACKET_LEN as u8;
        out[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        out[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        out[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        out[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        out[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        out
    }

    /// Desired Min TX Interval as a duration.
    pub fn desired_min_tx(&self) -> Duration {
        micros(self.desired_min_tx)
    }

    /// Required Min RX Interval as a duration.
    pub fn required_min_rx(&self) -> Duration {
        micros(self.required_min_rx)
    }
}

/// A wire interval (microseconds) as a duration.
pub fn micros(value: u32) -> Duration {
    Duration::from_micros(u64::from(value))
}

/// A duration as a wire interval in microseconds, saturating at the field's maximum.
pub fn to_micros(value: Duration) -> u32 {
    u32::try_from(value.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diagnostic: Diagnostic::None,
            state: State::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            authentication: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 0x0a0b_0c0d,
            desired_min_tx: 300_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn encodes_every_field_in_place() {
        let bytes = sample().encode();
        assert_eq!(
            bytes,
            [
                0x20, 0xe0, 3, 24, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0x04, 0x93, 0xe0, 0,
                0x01, 0x86, 0xa0, 0, 0, 0, 0
            ]
        );
        assert_eq!(ControlPacket::decode(&bytes), Ok(sample()));
    }

    /// A first packet as bfdd and BIRD send it: Down, no diagnostic, only the sender's
    /// discriminator, the 1 s transmit interval of a session that is not up, 300 ms receive,
    /// 50 ms echo.
    #[test]
    fn decodes_a_first_packet_while_down() {
        let bytes = [
            0x20, 0x40, 0x03, 0x18, 0x6e, 0x6b, 0x5a, 0x7c, 0, 0, 0, 0, 0x00, 0x0f, 0x42, 0x40,
            0x00, 0x04, 0x93, 0xe0, 0x00, 0x00, 0xc3, 0x50,
        ];
        let p = ControlPacket::decode(&bytes).unwrap();
        assert_eq!(p.state, State::Down);
        assert_eq!(p.detect_mult, 3);
        assert_eq!(p.my_discriminator, 0x6e6b_5a7c);
        assert_eq!(p.your_discriminator, 0);
        assert_eq!(p.desired_min_tx(), Duration::from_secs(1));
        assert_eq!(p.required_min_rx(), Duration::from_millis(300));
        assert_eq!(p.required_min_echo_rx, 50_000);
    }

    #[test]
    fn every_rule_of_6_8_6_discards() {
        let good = sample().encode();
        let with = |f: &dyn Fn(&mut [u8; 24])| {
            let mut b = good;
            f(&mut b);
            ControlPacket::decode(&b)
        };
        assert_eq!(
            ControlPacket::decode(&good[..23]),
            Err(PacketError::Truncated(23))
        );
        assert_eq!(with(&|b| b[0] = 0x40), Err(PacketError::Version(2)));
        assert_eq!(with(&|b| b[3] = 23), Err(PacketError::LengthTooSmall(23)));
        assert_eq!(
            ControlPacket::decode(&{
                let mut v = good.to_vec();
                v[3] = 30;
                v
            }),
            Err(PacketError::LengthBeyondPayload {
                field: 30,
                received: 24
            })
        );
        assert_eq!(with(&|b| b[2] = 0), Err(PacketError::ZeroDetectMult));
        assert_eq!(with(&|b| b[1] |= 0x01), Err(PacketError::Multipoint));
        assert_eq!(
            with(&|b| b[4..8].fill(0)),
            Err(PacketError::ZeroMyDiscriminator)
        );
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(PacketError::ZeroYourDiscriminator(State::Up))
        );
        // With authentication the minimum length is 26.
        assert_eq!(
            with(&|b| b[1] |= 0x04),
            Err(PacketError::LengthTooSmall(24))
        );
        let mut long = good.to_vec();
        long.extend_from_slice(&[1, 4, 0, 0]);
        long[1] |= 0x04;
        long[3] = 28;
        assert_eq!(
            ControlPacket::decode(&long),
            Err(PacketError::Authentication)
        );
    }

    #[test]
    fn your_discriminator_may_be_zero_while_down() {
        for state in [State::Down, State::AdminDown] {
            let p = ControlPacket {
                state,
                your_discriminator: 0,
                ..sample()
            };
            assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn trailing_octets_beyond_length_are_ignored() {
        let mut v = sample().encode().to_vec();
        v.extend_from_slice(&[0xff; 8]);
        assert_eq!(ControlPacket::decode(&v), Ok(sample()));
    }

    #[test]
    fn diagnostics_round_trip_through_their_codes() {
        for code in 0..32 {
            assert_eq!(Diagnostic::from_code(code).code(), code);
        }
    }
}
