//! The wire encoding of [`paycore_engine::Event`] and its enums, with stable tags.
//!
//! ```text
//! event = tag:u8 fields                     (fields in declaration order)
//!   1 currency_registered  currency:u16 scale:u8
//!   2 wallet_opened        wallet:u64 user:u128 currency:u16
//!   3 wallet_status_changed wallet:u64 user:u128 status:u8
//!   4 tier_changed         user:u128 tier:u8
//!   5 balance_changed      wallet:u64 user:u128 currency:u16 available:i128 frozen:i128 version:u64
//!   6 transfer             transfer:u128 kind:u8 from:u64 to:u64 amount:u128 currency:u16 status
//!   7 transfer_settled     transfer:u128 status
//!   8 hold_placed          hold:u64 wallet:u64 amount:u128 expires_at_ns:option<u64> withdrawal:u8
//!   9 hold_captured        hold:u64 wallet:u64 captured:u128 released:u128
//!  10 hold_released        hold:u64 wallet:u64 amount:u128 reason:u8
//! status  = 0 completed | 1 pending | 2 bounced reject:u8
//! kind    = TransferKind as u8: 1 deposit 2 transfer 3 capture 4 withdrawal 5 exchange_out
//!           6 exchange_in 7 refund
//! wallet status = 0 active 1 frozen 2 closed;  tier = 0 unverified 1 verified 2 premium;
//! reason  = 0 released 1 expired
//! ```

use paycore_engine::{
    CurrencyId, Event, HoldId, Reject, ReleaseReason, Tier, TransferId, TransferKind,
    TransferStatus, UserId, WalletId, WalletStatus,
};

use crate::error::{ProtocolError, ProtocolErrorKind};
use crate::wire::{Reader, Result, put_i128, put_option, put_u16, put_u64, put_u128};

/// Bytes of the longest event encoding (`balance_changed`).
pub const EVENT_BYTES_MAX: usize = 67;
/// Bytes of the shortest event encoding (`currency_registered`).
pub const EVENT_BYTES_MIN: usize = 4;

/// Appends the encoding of `event` to `out`. Every event encodes.
pub fn encode_event(event: &Event, out: &mut Vec<u8>) {
    match *event {
        Event::CurrencyRegistered { currency, scale } => {
            out.push(1);
            put_u16(out, currency.0);
            out.push(scale);
        }
        Event::WalletOpened {
            wallet,
            user,
            currency,
        } => {
            out.push(2);
            put_u64(out, wallet.0);
            put_u128(out, user.0);
            put_u16(out, currency.0);
        }
        Event::WalletStatusChanged {
            wallet,
            user,
            status,
        } => {
            out.push(3);
            put_u64(out, wallet.0);
            put_u128(out, user.0);
            out.push(status as u8);
        }
        Event::TierChanged { user, tier } => {
            out.push(4);
            put_u128(out, user.0);
            out.push(tier as u8);
        }
        Event::BalanceChanged {
            wallet,
            user,
            currency,
            available,
            frozen,
            version,
        } => {
            out.push(5);
            put_u64(out, wallet.0);
            put_u128(out, user.0);
            put_u16(out, currency.0);
            put_i128(out, available);
            put_i128(out, frozen);
            put_u64(out, version);
        }
        Event::Transfer {
            transfer,
            kind,
            from,
            to,
            amount,
            currency,
            status,
        } => {
            out.push(6);
            put_u128(out, transfer.0);
            out.push(kind as u8);
            put_u64(out, from.0);
            put_u64(out, to.0);
            put_u128(out, amount);
            put_u16(out, currency.0);
            put_transfer_status(out, status);
        }
        Event::TransferSettled { transfer, status } => {
            out.push(7);
            put_u128(out, transfer.0);
            put_transfer_status(out, status);
        }
        Event::HoldPlaced {
            hold,
            wallet,
            amount,
            expires_at_ns,
            withdrawal,
        } => {
            out.push(8);
            put_u64(out, hold.0);
            put_u64(out, wallet.0);
            put_u128(out, amount);
            put_option(out, expires_at_ns, put_u64);
            out.push(u8::from(withdrawal));
        }
        Event::HoldCaptured {
            hold,
            wallet,
            captured,
            released,
        } => {
            out.push(9);
            put_u64(out, hold.0);
            put_u64(out, wallet.0);
            put_u128(out, captured);
            put_u128(out, released);
        }
        Event::HoldReleased {
            hold,
            wallet,
            amount,
            reason,
        } => {
            out.push(10);
            put_u64(out, hold.0);
            put_u64(out, wallet.0);
            put_u128(out, amount);
            out.push(match reason {
                ReleaseReason::Released => 0,
                ReleaseReason::Expired => 1,
            });
        }
    }
}

fn put_transfer_status(out: &mut Vec<u8>, status: TransferStatus) {
    match status {
        TransferStatus::Completed => out.push(0),
        TransferStatus::Pending => out.push(1),
        TransferStatus::Bounced(reason) => {
            out.push(2);
            out.push(reason as u8);
        }
    }
}

/// Decodes one event from the start of `bytes`; returns it and the bytes it took. Error
/// offsets count from the start of `bytes`.
pub fn decode_event(bytes: &[u8]) -> std::result::Result<(Event, usize), ProtocolError> {
    let mut reader = Reader::new(bytes, 0);
    let event = read_event(&mut reader)?;
    Ok((event, reader.offset))
}

pub(crate) fn read_event(r: &mut Reader<'_>) -> Result<Event> {
    let at = r.offset;
    let event = match r.u8()? {
        1 => Event::CurrencyRegistered {
            currency: CurrencyId(r.u16()?),
            scale: r.u8()?,
        },
        2 => Event::WalletOpened {
            wallet: WalletId(r.u64()?),
            user: UserId(r.u128()?),
            currency: CurrencyId(r.u16()?),
        },
        3 => Event::WalletStatusChanged {
            wallet: WalletId(r.u64()?),
            user: UserId(r.u128()?),
            status: read_wallet_status(r)?,
        },
        4 => Event::TierChanged {
            user: UserId(r.u128()?),
            tier: read_tier(r)?,
        },
        5 => Event::BalanceChanged {
            wallet: WalletId(r.u64()?),
            user: UserId(r.u128()?),
            currency: CurrencyId(r.u16()?),
            available: r.i128()?,
            frozen: r.i128()?,
            version: r.u64()?,
        },
        6 => Event::Transfer {
            transfer: TransferId(r.u128()?),
            kind: read_transfer_kind(r)?,
            from: WalletId(r.u64()?),
            to: WalletId(r.u64()?),
            amount: r.u128()?,
            currency: CurrencyId(r.u16()?),
            status: read_transfer_status(r)?,
        },
        7 => Event::TransferSettled {
            transfer: TransferId(r.u128()?),
            status: read_transfer_status(r)?,
        },
        8 => Event::HoldPlaced {
            hold: HoldId(r.u64()?),
            wallet: WalletId(r.u64()?),
            amount: r.u128()?,
            expires_at_ns: r.option(Reader::u64)?,
            withdrawal: r.flag()?,
        },
        9 => Event::HoldCaptured {
            hold: HoldId(r.u64()?),
            wallet: WalletId(r.u64()?),
            captured: r.u128()?,
            released: r.u128()?,
        },
        10 => Event::HoldReleased {
            hold: HoldId(r.u64()?),
            wallet: WalletId(r.u64()?),
            amount: r.u128()?,
            reason: {
                let at = r.offset;
                match r.u8()? {
                    0 => ReleaseReason::Released,
                    1 => ReleaseReason::Expired,
                    tag => return r.fail(at, tag_error("release_reason", tag)),
                }
            },
        },
        tag => return r.fail(at, tag_error("event", tag)),
    };
    Ok(event)
}

fn tag_error(field: &'static str, tag: u8) -> ProtocolErrorKind {
    ProtocolErrorKind::Tag { field, tag }
}

pub(crate) fn read_wallet_status(r: &mut Reader<'_>) -> Result<WalletStatus> {
    let at = r.offset;
    match r.u8()? {
        0 => Ok(WalletStatus::Active),
        1 => Ok(WalletStatus::Frozen),
        2 => Ok(WalletStatus::Closed),
        tag => r.fail(at, tag_error("wallet_status", tag)),
    }
}

pub(crate) fn read_tier(r: &mut Reader<'_>) -> Result<Tier> {
    let at = r.offset;
    match r.u8()? {
        0 => Ok(Tier::Unverified),
        1 => Ok(Tier::Verified),
        2 => Ok(Tier::Premium),
        tag => r.fail(at, tag_error("tier", tag)),
    }
}

fn read_transfer_kind(r: &mut Reader<'_>) -> Result<TransferKind> {
    let at = r.offset;
    match r.u8()? {
        1 => Ok(TransferKind::Deposit),
        2 => Ok(TransferKind::Transfer),
        3 => Ok(TransferKind::Capture),
        4 => Ok(TransferKind::Withdrawal),
        5 => Ok(TransferKind::ExchangeOut),
        6 => Ok(TransferKind::ExchangeIn),
        7 => Ok(TransferKind::Refund),
        tag => r.fail(at, tag_error("transfer_kind", tag)),
    }
}

fn read_transfer_status(r: &mut Reader<'_>) -> Result<TransferStatus> {
    let at = r.offset;
    match r.u8()? {
        0 => Ok(TransferStatus::Completed),
        1 => Ok(TransferStatus::Pending),
        2 => {
            let at = r.offset;
            let code = r.u8()?;
            match Reject::from_u8(code) {
                Some(reason) => Ok(TransferStatus::Bounced(reason)),
                None => r.fail(at, tag_error("reject", code)),
            }
        }
        tag => r.fail(at, tag_error("transfer_status", tag)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_match_the_engine_reprs() {
        // The encoder writes `as u8`; the decoder's tables must agree, or the first event with
        // a changed repr would fail to round-trip.
        for (status, number) in [
            (WalletStatus::Active, 0),
            (WalletStatus::Frozen, 1),
            (WalletStatus::Closed, 2),
        ] {
            assert_eq!(status as u8, number);
        }
        for (tier, number) in [
            (Tier::Unverified, 0),
            (Tier::Verified, 1),
            (Tier::Premium, 2),
        ] {
            assert_eq!(tier as u8, number);
        }
        let kinds = [
            TransferKind::Deposit,
            TransferKind::Transfer,
            TransferKind::Capture,
            TransferKind::Withdrawal,
            TransferKind::ExchangeOut,
            TransferKind::ExchangeIn,
            TransferKind::Refund,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            assert_eq!(usize::from(kind as u8), i + 1);
        }
    }

    #[test]
    fn longest_and_shortest_events() {
        let mut bytes = Vec::new();
        encode_event(
            &Event::BalanceChanged {
                wallet: WalletId(1),
                user: UserId(2),
                currency: CurrencyId(3),
                available: -4,
                frozen: 5,
                version: 6,
            },
            &mut bytes,
        );
        assert_eq!(bytes.len(), EVENT_BYTES_MAX);
        bytes.clear();
        encode_event(
            &Event::CurrencyRegistered {
                currency: CurrencyId(0),
                scale: 2,
            },
            &mut bytes,
        );
        assert_eq!(bytes.len(), EVENT_BYTES_MIN);
    }

    #[test]
    fn named_errors() {
        let kind = |bytes: &[u8]| decode_event(bytes).map_err(|e| (e.offset, e.kind));
        assert_eq!(
            kind(&[0]),
            Err((
                0,
                ProtocolErrorKind::Tag {
                    field: "event",
                    tag: 0
                }
            ))
        );
        assert_eq!(kind(&[1, 0]), Err((1, ProtocolErrorKind::Truncated)));
        let mut settled = vec![7];
        settled.extend_from_slice(&[0; 16]);
        settled.extend_from_slice(&[2, 0]);
        assert_eq!(
            kind(&settled),
            Err((
                18,
                ProtocolErrorKind::Tag {
                    field: "reject",
                    tag: 0
                }
            ))
        );
    }
}
