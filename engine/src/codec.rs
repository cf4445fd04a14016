//! The binary encoding of commands: what the journal stores and the wire carries.
//!
//! Little-endian, no padding, every length bounded. Decoding is total: any byte string gives
//! either a command or a [`DecodeError`] naming the offset and what was wrong; it never panics
//! and never allocates more than the input's length allows (keys <= 255 bytes, groups <= 64
//! operations, no nesting).
//!
//! ```text
//! command   = 1 client | 2 credit_leg | 3 settle_leg | 4 tick
//! client    = key_len:u8 key:[u8; key_len] op
//! op        = tag:u8 fields          (tags below, fields in declaration order)
//! code      = len:u8 [A-Z]{len}      (1..=10)
//! option<T> = 0 | 1 T
//! linked    = count:u8 op{count}     (count <= 64, ops are not linked groups)
//! ```
//! Op tags: 1 register_currency, 2 set_velocity_limit, 3 set_tier, 4 open_wallet,
//! 5 close_wallet, 6 deposit, 7 transfer, 8 hold, 9 capture, 10 release, 11 withdraw,
//! 12 freeze_wallet, 13 unfreeze_wallet, 14 exchange, 15 linked.

use crate::command::{
    Command, CreditLeg, IDEMPOTENCY_KEY_BYTES_MAX, IdempotencyKey, LINKED_OPS_MAX, Op, Rate,
    SettleLeg, Tier,
};
use crate::currency::CurrencyCode;
use crate::currency::CurrencyId;
use crate::ids::{HoldId, TransferId, UserId, WalletId};
use crate::outcome::{Applied, Outcome, Reject};

/// Why bytes are not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed command at byte {offset}: {kind}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("input ends inside a field")]
    Truncated,
    #[error("unknown command tag {0}")]
    CommandTag(u8),
    #[error("unknown operation tag {0}")]
    OpTag(u8),
    #[error("idempotency key must be 1 to 255 bytes")]
    KeyLength,
    #[error("invalid currency code")]
    CurrencyCode,
    #[error("unknown tier {0}")]
    Tier(u8),
    #[error("option flag must be 0 or 1, found {0}")]
    OptionFlag(u8),
    #[error("invalid exchange rate")]
    Rate,
    #[error("unknown rejection code {0}")]
    Reject(u8),
    #[error("linked group too long or nested")]
    Linked,
    #[error("bytes left after the command")]
    TrailingBytes,
}

/// Bytes of the longest outcome encoding.
pub const OUTCOME_BYTES_MAX: usize = 34;

/// Appends the encoding of an outcome (wire responses, snapshots):
/// `0 applied_tag fields | 1 reject:u8 | 2 index:u16 reject:u8`, applied tags 0 done,
/// 1 wallet_opened u64, 2 currency_registered u16, 3 transferred u128 pending:u8,
/// 4 hold_placed u64, 5 exchanged u128 u128, 6 linked u16.
pub fn encode_outcome(outcome: &Outcome, out: &mut Vec<u8>) {
    match outcome {
        Outcome::Ok(applied) => {
            out.push(0);
            match applied {
                Applied::Done => out.push(0),
                Applied::WalletOpened(wallet) => {
                    out.push(1);
                    put_u64(out, wallet.0);
                }
                Applied::CurrencyRegistered(currency) => {
                    out.push(2);
                    out.extend_from_slice(&currency.0.to_le_bytes());
                }
                Applied::Transferred { transfer, pending } => {
                    out.push(3);
                    put_u128(out, transfer.0);
                    out.push(u8::from(*pending));
                }
                Applied::HoldPlaced(hold) => {
                    out.push(4);
                    put_u64(out, hold.0);
                }
                Applied::Exchanged { transfer, credited } => {
                    out.push(5);
                    put_u128(out, transfer.0);
                    put_u128(out, *credited);
                }
                Applied::Linked { ops } => {
                    out.push(6);
                    out.extend_from_slice(&ops.to_le_bytes());
                }
            }
        }
        Outcome::Rejected(reason) => {
            out.push(1);
            out.push(*reason as u8);
        }
        Outcome::LinkedRejected { index, reason } => {
            out.push(2);
            out.extend_from_slice(&index.to_le_bytes());
            out.push(*reason as u8);
        }
    }
}

/// Decodes one outcome from the start of `bytes`; returns it and the bytes it took.
pub fn decode_outcome(bytes: &[u8]) -> Result<(Outcome, usize), DecodeError> {
    let mut reader = Reader { bytes, offset: 0 };
    let outcome = reader.outcome()?;
    Ok((outcome, reader.offset))
}

/// Appends the encoding of `command` to `out`.
pub fn encode_command(command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::Client { key, op } => {
            out.push(1);
            let bytes = key.as_bytes();
            assert!(!bytes.is_empty() && bytes.len() <= IDEMPOTENCY_KEY_BYTES_MAX);
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
            encode_op(op, out);
        }
        Command::CreditLeg(leg) => {
            out.push(2);
            put_u128(out, leg.transfer.0);
            put_u64(out, leg.from.0);
            put_u64(out, leg.to.0);
            put_u128(out, leg.amount);
            put_code(out, &leg.currency);
            put_u64(out, leg.origin_sequence);
            put_u128(out, leg.settled_through);
        }
        Command::SettleLeg(leg) => {
            out.push(3);
            put_u128(out, leg.transfer.0);
            out.extend_from_slice(&leg.from_shard.to_le_bytes());
            put_u64(out, leg.from_sequence);
            out.push(leg.refused.map_or(0, |r| r as u8));
        }
        Command::Tick => out.push(4),
    }
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::RegisterCurrency { code, scale } => {
            out.push(1);
            put_code(out, code);
            out.push(*scale);
        }
        Op::SetVelocityLimit {
            tier,
            currency,
            limit_24h,
        } => {
            out.push(2);
            out.push(*tier as u8);
            put_code(out, currency);
            put_option(out, *limit_24h, put_u128);
        }
        Op::SetTier { user, tier } => {
            out.push(3);
            put_u128(out, user.0);
            out.push(*tier as u8);
        }
        Op::OpenWallet { user, currency } => {
            out.push(4);
            put_u128(out, user.0);
            put_code(out, currency);
        }
        Op::CloseWallet { wallet } => {
            out.push(5);
            put_u64(out, wallet.0);
        }
        Op::Deposit {
            wallet,
            amount,
            currency,
        } => {
            out.push(6);
            put_u64(out, wallet.0);
            put_u128(out, *amount);
            put_code(out, currency);
        }
        Op::Transfer {
            from,
            to,
            amount,
            currency,
        } => {
            out.push(7);
            put_u64(out, from.0);
            put_u64(out, to.0);
            put_u128(out, *amount);
            put_code(out, currency);
        }
        Op::Hold {
            wallet,
            amount,
            currency,
            expires_at_ns,
        } => {
            out.push(8);
            put_u64(out, wallet.0);
            put_u128(out, *amount);
            put_code(out, currency);
            put_option(out, *expires_at_ns, put_u64);
        }
        Op::Capture { hold, amount, to } => {
            out.push(9);
            put_u64(out, hold.0);
            put_option(out, *amount, put_u128);
            put_option(out, to.map(|w| w.0), put_u64);
        }
        Op::Release { hold } => {
            out.push(10);
            put_u64(out, hold.0);
        }
        Op::Withdraw {
            wallet,
            amount,
            currency,
        } => {
            out.push(11);
            put_u64(out, wallet.0);
            put_u128(out, *amount);
            put_code(out, currency);
        }
        Op::FreezeWallet { wallet } => {
            out.push(12);
            put_u64(out, wallet.0);
        }
        Op::UnfreezeWallet { wallet } => {
            out.push(13);
            put_u64(out, wallet.0);
        }
        Op::Exchange {
            from,
            to,
            amount,
            rate,
        } => {
            out.push(14);
            put_u64(out, from.0);
            put_u64(out, to.0);
            put_u128(out, *amount);
            put_u128(out, rate.mantissa());
            out.push(rate.scale());
        }
        Op::Linked(ops) => {
            assert!(
                ops.len() <= LINKED_OPS_MAX,
                "linked group longer than the codec allows"
            );
            out.push(15);
            out.push(ops.len() as u8);
            for op in ops {
                assert!(
                    !matches!(op, Op::Linked(_)),
                    "nested linked groups cannot be encoded"
                );
                encode_op(op, out);
            }
        }
    }
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u128(out: &mut Vec<u8>, value: u128) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_code(out: &mut Vec<u8>, code: &CurrencyCode) {
    let bytes = code.as_bytes();
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn put_option<T>(out: &mut Vec<u8>, value: Option<T>, put: fn(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put(out, value);
        }
    }
}

/// Decodes exactly one command from `bytes` (no trailing bytes allowed).
pub fn decode_command(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut reader = Reader { bytes, offset: 0 };
    let command = reader.command()?;
    if reader.offset != bytes.len() {
        return Err(reader.error(DecodeErrorKind::TrailingBytes));
    }
    Ok(command)
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.offset,
            kind,
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self.bytes.get(self.offset..self.offset + N);
        let array = slice
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(self.error(DecodeErrorKind::Truncated))?;
        self.offset += N;
        Ok(array)
    }

    fn slice(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .offset
            .checked_add(len)
            .ok_or(self.error(DecodeErrorKind::Truncated))?;
        let slice = self
            .bytes
            .get(self.offset..end)
            .ok_or(self.error(DecodeErrorKind::Truncated))?;
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.take()?))
    }

    fn code(&mut self) -> Result<CurrencyCode, DecodeError> {
        let start = self.offset;
        let len = usize::from(self.u8()?);
        let bytes = self.slice(len)?;
        CurrencyCode::from_bytes(bytes).map_err(|_| DecodeError {
            offset: start,
            kind: DecodeErrorKind::CurrencyCode,
        })
    }

    fn tier(&mut self) -> Result<Tier, DecodeError> {
        match self.u8()? {
            0 => Ok(Tier::Unverified),
            1 => Ok(Tier::Verified),
            2 => Ok(Tier::Premium),
            other => Err(DecodeError {
                offset: self.offset - 1,
                kind: DecodeErrorKind::Tier(other),
            }),
        }
    }

    fn option<T>(
        &mut self,
        read: fn(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(DecodeError {
                offset: self.offset - 1,
                kind: DecodeErrorKind::OptionFlag(other),
            }),
        }
    }

    fn command(&mut self) -> Result<Command, DecodeError> {
        match self.u8()? {
            1 => {
                let start = self.offset;
                let len = usize::from(self.u8()?);
                let key = IdempotencyKey::new(self.slice(len)?).map_err(|_| DecodeError {
                    offset: start,
                    kind: DecodeErrorKind::KeyLength,
                })?;
                let op = self.op(true)?;
                Ok(Command::Client { key, op })
            }
            2 => Ok(Command::CreditLeg(CreditLeg {
                transfer: TransferId(self.u128()?),
                from: WalletId(self.u64()?),
                to: WalletId(self.u64()?),
                amount: self.u128()?,
                currency: self.code()?,
                origin_sequence: self.u64()?,
                settled_through: self.u128()?,
            })),
            3 => {
                let transfer = TransferId(self.u128()?);
                let from_shard = self.u16()?;
                let from_sequence = self.u64()?;
                let refused = match self.bytes.get(self.offset) {
                    Some(0) => {
                        self.offset += 1;
                        None
                    }
                    _ => Some(self.reject()?),
                };
                Ok(Command::SettleLeg(SettleLeg {
                    transfer,
                    from_shard,
                    from_sequence,
                    refused,
                }))
            }
            4 => Ok(Command::Tick),
            tag => Err(DecodeError {
                offset: self.offset - 1,
                kind: DecodeErrorKind::CommandTag(tag),
            }),
        }
    }

    fn reject(&mut self) -> Result<Reject, DecodeError> {
        let code = self.u8()?;
        Reject::from_u8(code).ok_or(DecodeError {
            offset: self.offset - 1,
            kind: DecodeErrorKind::Reject(code),
        })
    }

    fn outcome(&mut self) -> Result<Outcome, DecodeError> {
        let tag_offset = self.offset;
        match self.u8()? {
            0 => {
                let applied = match self.u8()? {
                    0 => Applied::Done,
                    1 => Applied::WalletOpened(WalletId(self.u64()?)),
                    2 => Applied::CurrencyRegistered(CurrencyId(self.u16()?)),
                    3 => {
                        let transfer = TransferId(self.u128()?);
                        let pending = match self.u8()? {
                            0 => false,
                            1 => true,
                            other => {
                                return Err(DecodeError {
                                    offset: self.offset - 1,
                                    kind: DecodeErrorKind::OptionFlag(other),
                                });
                            }
                        };
                        Applied::Transferred { transfer, pending }
                    }
                    4 => Applied::HoldPlaced(HoldId(self.u64()?)),
                    5 => Applied::Exchanged {
                        transfer: TransferId(self.u128()?),
                        credited: self.u128()?,
                    },
                    6 => Applied::Linked { ops: self.u16()? },
                    tag => {
                        return Err(DecodeError {
                            offset: self.offset - 1,
                            kind: DecodeErrorKind::OpTag(tag),
                        });
                    }
                };
                Ok(Outcome::Ok(applied))
            }
            1 => Ok(Outcome::Rejected(self.reject()?)),
            2 => Ok(Outcome::LinkedRejected {
                index: self.u16()?,
                reason: self.reject()?,
            }),
            tag => Err(DecodeError {
                offset: tag_offset,
                kind: DecodeErrorKind::CommandTag(tag),
            }),
        }
    }

    fn op(&mut self, may_link: bool) -> Result<Op, DecodeError> {
        let tag_offset = self.offset;
        let op = match self.u8()? {
            1 => Op::RegisterCurrency {
                code: self.code()?,
                scale: self.u8()?,
            },
            2 => Op::SetVelocityLimit {
                tier: self.tier()?,
                currency: self.code()?,
                limit_24h: self.option(Self::u128)?,
            },
            3 => Op::SetTier {
                user: UserId(self.u128()?),
                tier: self.tier()?,
            },
            4 => Op::OpenWallet {
                user: UserId(self.u128()?),
                currency: self.code()?,
            },
            5 => Op::CloseWallet {
                wallet: WalletId(self.u64()?),
            },
            6 => Op::Deposit {
                wallet: WalletId(self.u64()?),
                amount: self.u128()?,
                currency: self.code()?,
            },
            7 => Op::Transfer {
                from: WalletId(self.u64()?),
                to: WalletId(self.u64()?),
                amount: self.u128()?,
                currency: self.code()?,
            },
            8 => Op::Hold {
                wallet: WalletId(self.u64()?),
                amount: self.u128()?,
                currency: self.code()?,
                expires_at_ns: self.option(Self::u64)?,
            },
            9 => Op::Capture {
                hold: HoldId(self.u64()?),
                amount: self.option(Self::u128)?,
                to: self.option(Self::u64)?.map(WalletId),
            },
            10 => Op::Release {
                hold: HoldId(self.u64()?),
            },
            11 => Op::Withdraw {
                wallet: WalletId(self.u64()?),
                amount: self.u128()?,
                currency: self.code()?,
            },
            12 => Op::FreezeWallet {
                wallet: WalletId(self.u64()?),
            },
            13 => Op::UnfreezeWallet {
                wallet: WalletId(self.u64()?),
            },
            14 => {
                let from = WalletId(self.u64()?);
                let to = WalletId(self.u64()?);
                let amount = self.u128()?;
                let rate_offset = self.offset;
                let rate = Rate::new(self.u128()?, self.u8()?).ok_or(DecodeError {
                    offset: rate_offset,
                    kind: DecodeErrorKind::Rate,
                })?;
                Op::Exchange {
                    from,
                    to,
                    amount,
                    rate,
                }
            }
            15 if may_link => {
                let count = usize::from(self.u8()?);
                if count > LINKED_OPS_MAX {
                    return Err(DecodeError {
                        offset: tag_offset,
                        kind: DecodeErrorKind::Linked,
                    });
                }
                let mut ops = Vec::with_capacity(count);
                for _ in 0..count {
                    ops.push(self.op(false)?);
                }
                Op::Linked(ops)
            }
            15 => {
                return Err(DecodeError {
                    offset: tag_offset,
                    kind: DecodeErrorKind::Linked,
                });
            }
            tag => {
                return Err(DecodeError {
                    offset: tag_offset,
                    kind: DecodeErrorKind::OpTag(tag),
                });
            }
        };
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(text: &str) -> CurrencyCode {
        CurrencyCode::parse(text).expect("valid code")
    }

    fn arb_code() -> impl Strategy<Value = CurrencyCode> {
        "[A-Z]{1,10}".prop_map(|s| code(&s))
    }

    fn arb_tier() -> impl Strategy<Value = Tier> {
        prop_oneof![
            Just(Tier::Unverified),
            Just(Tier::Verified),
            Just(Tier::Premium)
        ]
    }

    fn arb_simple_op() -> impl Strategy<Value = Op> {
        let w = any::<u64>().prop_map(WalletId);
        prop_oneof![
            (arb_code(), any::<u8>())
                .prop_map(|(code, scale)| Op::RegisterCurrency { code, scale }),
            (arb_tier(), arb_code(), any::<Option<u128>>()).prop_map(
                |(tier, currency, limit_24h)| Op::SetVelocityLimit {
                    tier,
                    currency,
                    limit_24h
                }
            ),
            (any::<u128>(), arb_tier()).prop_map(|(u, tier)| Op::SetTier {
                user: UserId(u),
                tier
            }),
            (any::<u128>(), arb_code()).prop_map(|(u, currency)| Op::OpenWallet {
                user: UserId(u),
                currency
            }),
            w.clone().prop_map(|wallet| Op::CloseWallet { wallet }),
            (w.clone(), any::<u128>(), arb_code()).prop_map(|(wallet, amount, currency)| {
                Op::Deposit {
                    wallet,
                    amount,
                    currency,
                }
            }),
            (w.clone(), w.clone(), any::<u128>(), arb_code()).prop_map(
                |(from, to, amount, currency)| Op::Transfer {
                    from,
                    to,
                    amount,
                    currency
                }
            ),
            (w.clone(), any::<u128>(), arb_code(), any::<Option<u64>>()).prop_map(
                |(wallet, amount, currency, expires_at_ns)| Op::Hold {
                    wallet,
                    amount,
                    currency,
                    expires_at_ns
                }
            ),
            (any::<u64>(), any::<Option<u128>>(), any::<Option<u64>>()).prop_map(
                |(h, amount, to)| {
                    Op::Capture {
                        hold: HoldId(h),
                        amount,
                        to: to.map(WalletId),
                    }
                }
            ),
            any::<u64>().prop_map(|h| Op::Release { hold: HoldId(h) }),
            (w.clone(), any::<u128>(), arb_code()).prop_map(|(wallet, amount, currency)| {
                Op::Withdraw {
                    wallet,
                    amount,
                    currency,
                }
            }),
            w.clone().prop_map(|wallet| Op::FreezeWallet { wallet }),
            w.clone().prop_map(|wallet| Op::UnfreezeWallet { wallet }),
            (w.clone(), w, any::<u128>(), 1u128..1_000_000, 0u8..=18).prop_map(
                |(from, to, amount, m, s)| {
                    Op::Exchange {
                        from,
                        to,
                        amount,
                        rate: Rate::new(m, s).expect("in range"),
                    }
                }
            ),
        ]
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let key = proptest::collection::vec(any::<u8>(), 1..=255)
            .prop_map(|k| IdempotencyKey::new(&k).expect("valid length"));
        let op = prop_oneof![
            4 => arb_simple_op(),
            1 => proptest::collection::vec(arb_simple_op(), 0..5).prop_map(Op::Linked),
        ];
        prop_oneof![
            6 => (key, op).prop_map(|(key, op)| Command::Client { key, op }),
            1 => (any::<u128>(), any::<u64>(), any::<u64>(), any::<u128>(), arb_code(), any::<u64>(), any::<u128>())
                .prop_map(|(t, f, to, amount, currency, origin_sequence, settled_through)| Command::CreditLeg(CreditLeg {
                    transfer: TransferId(t), from: WalletId(f), to: WalletId(to), amount, currency, origin_sequence,
                    settled_through,
                })),
            1 => (any::<u128>(), any::<u16>(), any::<u64>(), proptest::option::of(0usize..Reject::ALL.len()))
                .prop_map(|(t, from_shard, from_sequence, r)| Command::SettleLeg(SettleLeg {
                    transfer: TransferId(t), from_shard, from_sequence, refused: r.map(|i| Reject::ALL[i]),
                })),
            1 => Just(Command::Tick),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(command in arb_command()) {
            let mut bytes = Vec::new();
            encode_command(&command, &mut bytes);
            prop_assert_eq!(decode_command(&bytes), Ok(command));
        }

        #[test]
        fn truncations_and_extensions_are_errors(command in arb_command(), extra in 1u8..=255) {
            let mut bytes = Vec::new();
            encode_command(&command, &mut bytes);
            for len in 0..bytes.len() {
                prop_assert!(decode_command(&bytes[..len]).is_err());
            }
            bytes.push(extra);
            prop_assert_eq!(
                decode_command(&bytes).map_err(|e| e.kind),
                Err(DecodeErrorKind::TrailingBytes)
            );
        }

        #[test]
        fn random_and_mutated_bytes_never_panic(
            command in arb_command(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            noise in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = decode_command(&noise);
            let mut bytes = Vec::new();
            encode_command(&command, &mut bytes);
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            if let Ok(decoded) = decode_command(&bytes) {
                // Whatever decodes must re-encode to the same bytes (one encoding per command).
                let mut again = Vec::new();
                encode_command(&decoded, &mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }

    #[test]
    fn outcomes_round_trip() {
        let outcomes = [
            Outcome::Ok(Applied::Done),
            Outcome::Ok(Applied::WalletOpened(WalletId(u64::MAX))),
            Outcome::Ok(Applied::CurrencyRegistered(CurrencyId(7))),
            Outcome::Ok(Applied::Transferred {
                transfer: TransferId(u128::MAX),
                pending: true,
            }),
            Outcome::Ok(Applied::HoldPlaced(HoldId(9))),
            Outcome::Ok(Applied::Exchanged {
                transfer: TransferId(1),
                credited: u128::MAX,
            }),
            Outcome::Ok(Applied::Linked { ops: 64 }),
            Outcome::Rejected(Reject::InsufficientFunds),
            Outcome::LinkedRejected {
                index: 3,
                reason: Reject::WalletFrozen,
            },
        ];
        for outcome in outcomes {
            let mut bytes = Vec::new();
            encode_outcome(&outcome, &mut bytes);
            assert!(bytes.len() <= OUTCOME_BYTES_MAX);
            assert_eq!(decode_outcome(&bytes), Ok((outcome, bytes.len())));
        }
        assert!(decode_outcome(&[1, 0]).is_err());
        assert!(decode_outcome(&[0, 3, 1]).is_err());
    }

    #[test]
    fn named_errors() {
        assert_eq!(
            decode_command(&[]).map_err(|e| e.kind),
            Err(DecodeErrorKind::Truncated)
        );
        assert_eq!(
            decode_command(&[9]).map_err(|e| e.kind),
            Err(DecodeErrorKind::CommandTag(9))
        );
        assert_eq!(
            decode_command(&[1, 0]).map_err(|e| e.kind),
            Err(DecodeErrorKind::KeyLength)
        );
        assert_eq!(
            decode_command(&[1, 1, b'k', 99]),
            Err(DecodeError {
                offset: 3,
                kind: DecodeErrorKind::OpTag(99)
            })
        );
        // A linked group inside a linked group.
        assert_eq!(
            decode_command(&[1, 1, b'k', 15, 1, 15, 0]).map_err(|e| e.kind),
            Err(DecodeErrorKind::Linked)
        );
        // 65 operations.
        assert_eq!(
            decode_command(&[1, 1, b'k', 15, 65]).map_err(|e| e.kind),
            Err(DecodeErrorKind::Linked)
        );
    }
}
