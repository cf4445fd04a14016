//! Errors: why bytes are not a frame ([`ProtocolError`]), why a value cannot be encoded
//! ([`EncodeError`]), and the stable numbers an error frame carries ([`ErrorCode`]).

use paycore_engine::SHARD_COUNT_MAX;
use paycore_engine::codec::DecodeErrorKind;
use paycore_engine::currency::CURRENCY_SCALE_MAX;

use crate::Frame;

/// Why bytes are not a frame: what was wrong, the byte offset **from the first byte of the
/// frame** (the first byte of its length field) where it was found, and the frame's request id
/// when its header had been read.
///
/// Every decode error is fatal for the connection: the receiver answers with
/// [`ProtocolError::to_frame`] and closes it, since after a bad frame the byte stream cannot be
/// trusted to be in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad frame at byte {offset}: {kind}")]
pub struct ProtocolError {
    pub offset: usize,
    pub request_id: Option<u64>,
    pub kind: ProtocolErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolErrorKind {
    #[error("frame of {bytes} bytes is over the limit of {max}")]
    FrameTooLarge { bytes: u64, max: usize },
    #[error("length field {length} is shorter than the frame header")]
    FrameTooShort { length: u32 },
    #[error("input ends inside the frame")]
    Truncated,
    #[error("bytes left after the frame's body")]
    TrailingBytes,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown {field} tag {tag}")]
    Tag { field: &'static str, tag: u8 },
    #[error("flag must be 0 or 1, found {0}")]
    Flag(u8),
    #[error("{count} items in {field}, at most {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("a batch holds 1 to {max} commands, found {0}", max = crate::BATCH_COMMANDS_MAX)]
    BatchSize(usize),
    #[error("command length {0} is not within 1..={max}", max = crate::COMMAND_BYTES_MAX)]
    CommandLength(u32),
    #[error("malformed command: {0}")]
    Command(DecodeErrorKind),
    #[error("only client commands may be submitted")]
    NotClientCommand,
    #[error("malformed outcome: {0}")]
    Outcome(DecodeErrorKind),
    #[error("invalid currency code")]
    CurrencyCode,
    #[error("currency scale {0} is above {max}", max = CURRENCY_SCALE_MAX)]
    Scale(u8),
    #[error("idempotency key must be 1 to 255 bytes")]
    IdempotencyKey,
    #[error("shard {0} is not below {max}", max = SHARD_COUNT_MAX)]
    Shard(u16),
    #[error("shard {0} is named twice")]
    DuplicateShard(u16),
    #[error("event range does not fit the command's event count")]
    EventRange,
    #[error("shard status has {0} fields, fewer than version 1's")]
    StatusFields(u8),
    #[error("error message is not UTF-8")]
    MessageUtf8,
}

impl ProtocolErrorKind {
    /// The code an error frame answering this error carries.
    pub fn code(self) -> ErrorCode {
        match self {
            ProtocolErrorKind::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            ProtocolErrorKind::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            ProtocolErrorKind::UnknownKind(_) => ErrorCode::UNKNOWN_KIND,
            ProtocolErrorKind::BatchSize(_) => ErrorCode::BATCH_INVALID,
            ProtocolErrorKind::NotClientCommand => ErrorCode::COMMAND_NOT_ALLOWED,
            _ => ErrorCode::MALFORMED,
        }
    }
}

impl ProtocolError {
    pub(crate) fn new(offset: usize, kind: ProtocolErrorKind) -> Self {
        ProtocolError {
            offset,
            request_id: None,
            kind,
        }
    }

    /// The code an error frame answering this error carries.
    pub fn code(&self) -> ErrorCode {
        self.kind.code()
    }

    /// The error frame to send before closing the connection; send it with
    /// `self.request_id.unwrap_or(0)`.
    pub fn to_frame(&self) -> Frame {
        Frame::error(self.code(), self.to_string())
    }
}

/// Why a frame cannot be encoded: it breaks a rule the decoder enforces (so that whatever
/// encodes also decodes, to an equal frame). These are bugs of the sender, not of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a batch holds 1 to {max} commands or results, not {0}", max = crate::BATCH_COMMANDS_MAX)]
    BatchSize(usize),
    #[error("command {index} is not a client command")]
    NotClientCommand { index: usize },
    #[error("command {index} has a linked group that is too long or nested")]
    LinkedGroup { index: usize },
    #[error("command {index} encodes to {bytes} bytes, over {max}", max = crate::COMMAND_BYTES_MAX)]
    CommandTooLong { index: usize, bytes: usize },
    #[error("{count} items in {field}, at most {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("shard {0} is not below {max}", max = SHARD_COUNT_MAX)]
    Shard(u16),
    #[error("shard {0} is named twice")]
    DuplicateShard(u16),
    #[error("currency scale {0} is above {max}", max = CURRENCY_SCALE_MAX)]
    Scale(u8),
    #[error("event range does not fit the command's event count")]
    EventRange,
    #[error("frame of {0} bytes is over the limit")]
    FrameTooLarge(usize),
}

/// The stable number of an error frame's reason. Numbers are never reused; a receiver keeps a
/// number it does not know (from a newer peer) as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A frame's content does not decode.
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// A frame's length is over the receiver's limit.
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(2);
    /// A frame's protocol version is not one the receiver speaks.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(3);
    /// A frame's kind is not one the receiver knows.
    pub const UNKNOWN_KIND: ErrorCode = ErrorCode(4);
    /// A batch is empty or holds more than [`crate::BATCH_COMMANDS_MAX`] commands.
    pub const BATCH_INVALID: ErrorCode = ErrorCode(5);
    /// A batch holds a command clients may not send (a credit leg, a settle leg, a tick).
    pub const COMMAND_NOT_ALLOWED: ErrorCode = ErrorCode(6);
    /// A well-formed frame the receiver does not accept from this peer (a client sending
    /// `events`, a node sending `submit_batch`).
    pub const UNEXPECTED_FRAME: ErrorCode = ErrorCode(7);
    /// A query or subscription names a shard this node does not serve. The connection stays.
    pub const SHARD_UNAVAILABLE: ErrorCode = ErrorCode(8);
    /// A subscription asks for a sequence the node no longer keeps (archived). The connection
    /// stays; the consumer must rebuild from a snapshot or the store.
    pub const POSITION_UNAVAILABLE: ErrorCode = ErrorCode(9);
    /// The node is shutting down.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(10);
    /// A bug or an I/O failure on the sender's side.
    pub const INTERNAL: ErrorCode = ErrorCode(11);
    /// The node is not a primary (a standby): it neither takes writes nor serves a standby.
    /// The connection stays.
    pub const NOT_PRIMARY: ErrorCode = ErrorCode(12);
    /// A replication peer's epoch is not acceptable (a fenced old primary, or a standby that
    /// knows a newer primary).
    pub const STALE_EPOCH: ErrorCode = ErrorCode(13);
    /// An operator command refused because it is unsafe now (the message says why). The
    /// connection stays.
    pub const REFUSED: ErrorCode = ErrorCode(14);
    /// The connection's role may not send this frame (a replication frame without the
    /// replication credential), or an `authenticate` frame's credential is unknown. The
    /// connection stays, with the role it had.
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(15);
    /// The request did not fit in the connection's (or the node's) request memory budget;
    /// nothing of it was read or applied. Retry once earlier answers have come back. The
    /// connection stays.
    pub const OVERLOADED: ErrorCode = ErrorCode(16);

    /// Every assigned code, in number order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::MALFORMED,
        ErrorCode::FRAME_TOO_LARGE,
        ErrorCode::UNSUPPORTED_VERSION,
        ErrorCode::UNKNOWN_KIND,
        ErrorCode::BATCH_INVALID,
        ErrorCode::COMMAND_NOT_ALLOWED,
        ErrorCode::UNEXPECTED_FRAME,
        ErrorCode::SHARD_UNAVAILABLE,
        ErrorCode::POSITION_UNAVAILABLE,
        ErrorCode::SHUTTING_DOWN,
        ErrorCode::INTERNAL,
        ErrorCode::NOT_PRIMARY,
        ErrorCode::STALE_EPOCH,
        ErrorCode::REFUSED,
        ErrorCode::UNAUTHORIZED,
        ErrorCode::OVERLOADED,
    ];

    /// The stable snake_case name, `"unknown"` for a number this version does not know.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MALFORMED => "malformed",
            ErrorCode::FRAME_TOO_LARGE => "frame_too_large",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported_version",
            ErrorCode::UNKNOWN_KIND => "unknown_kind",
            ErrorCode::BATCH_INVALID => "batch_invalid",
            ErrorCode::COMMAND_NOT_ALLOWED => "command_not_allowed",
            ErrorCode::UNEXPECTED_FRAME => "unexpected_frame",
            ErrorCode::SHARD_UNAVAILABLE => "shard_unavailable",
            ErrorCode::POSITION_UNAVAILABLE => "position_unavailable",
            ErrorCode::SHUTTING_DOWN => "shutting_down",
            ErrorCode::INTERNAL => "internal",
            ErrorCode::NOT_PRIMARY => "not_primary",
            ErrorCode::STALE_EPOCH => "stale_epoch",
            ErrorCode::REFUSED => "refused",
            ErrorCode::UNAUTHORIZED => "unauthorized",
            ErrorCode::OVERLOADED => "overloaded",
            _ => "unknown",
        }
    }

    /// The sender closes the connection after an error frame with this code. Only
    /// `shard_unavailable`, `position_unavailable`, `not_primary` and `refused` answer one
    /// request and keep the connection (and `unauthorized`); a code this version does not know
    /// counts as closing.
    pub fn closes_connection(self) -> bool {
        !matches!(
            self,
            ErrorCode::SHARD_UNAVAILABLE
                | ErrorCode::POSITION_UNAVAILABLE
                | ErrorCode::NOT_PRIMARY
                | ErrorCode::REFUSED
                | ErrorCode::UNAUTHORIZED
                | ErrorCode::OVERLOADED
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}
