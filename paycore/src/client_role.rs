//! Roles of the clients of a node's QUIC port: what each may send.
//!
//! With `--ca` every client presents a certificate the CA signed, and its role is named by a
//! DNS subject-alternative name `<role>.role.paycore` in that certificate (checked with
//! webpki's name matching, so no certificate parser of our own). A certificate naming no role
//! is `readonly`. Without `--ca` the node listens on loopback only (unless the operator says
//! `--allow-unauthenticated-clients`) and every local process is an `operator`: the machine's
//! own users are trusted, the network is not.
//!
//! | role | submit | queries, subscriptions, status | operator commands |
//! |---|---|---|---|
//! | `operator` | every operation | yes | `promote`, velocity limits |
//! | `gateway` | every operation but velocity limits | yes | no |
//! | `loadgen` | currencies, wallets, money movements (no freezes, tiers, limits, closes) | yes | no |
//! | `readonly` | nothing | yes | no |
//!
//! Replication (`replica_hello`, snapshots) needs the cluster's replication token in every
//! case (see `credentials.rs`). A frame outside the role is answered `unauthorized` (the
//! connection stays).

use paycore_engine::Op;
use paycore_protocol::AdminCommand;
use rustls::pki_types::{CertificateDer, ServerName};

/// What a client of the node port may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Operator,
    Gateway,
    LoadGenerator,
    ReadOnly,
}

impl ClientRole {
    /// Most privileged first: a certificate naming several roles gets the first.
    pub const ALL: [ClientRole; 4] = [
        ClientRole::Operator,
        ClientRole::Gateway,
        ClientRole::LoadGenerator,
        ClientRole::ReadOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClientRole::Operator => "operator",
            ClientRole::Gateway => "gateway",
            ClientRole::LoadGenerator => "loadgen",
            ClientRole::ReadOnly => "readonly",
        }
    }

    /// The DNS name a client certificate carries to have this role.
    pub fn certificate_name(self) -> String {
        format!("{}.role.paycore", self.name())
    }

    /// The role a (CA-verified) client certificate names; `readonly` when it names none or
    /// does not parse.
    pub fn of_certificate(der: &CertificateDer<'_>) -> ClientRole {
        let Ok(certificate) = webpki::EndEntityCert::try_from(der) else {
            return ClientRole::ReadOnly;
        };
        ClientRole::ALL
            .into_iter()
            .find(|role| {
                ServerName::try_from(role.certificate_name())
                    .is_ok_and(|name| certificate.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .unwrap_or(ClientRole::ReadOnly)
    }

    /// May this role submit `op` (a linked group: every operation in it)?
    pub fn allows_op(self, op: &Op) -> bool {
        match (self, op) {
            (_, Op::Linked(ops)) => ops.iter().all(|op| self.allows_op(op)),
            (ClientRole::Operator, _) => true,
            (ClientRole::Gateway, Op::SetVelocityLimit { .. }) => false,
            (ClientRole::Gateway, _) => true,
            (
                ClientRole::LoadGenerator,
                Op::RegisterCurrency { .. }
                | Op::OpenWallet { .. }
                | Op::Deposit { .. }
                | Op::Transfer { .. }
                | Op::Hold { .. }
                | Op::Capture { .. }
                | Op::Release { .. }
                | Op::Withdraw { .. }
                | Op::Exchange { .. },
            ) => true,
            (ClientRole::LoadGenerator | ClientRole::ReadOnly, _) => false,
        }
    }

    /// May this role send the operator command `command`?
    pub fn allows_admin(self, command: &AdminCommand) -> bool {
        match command {
            AdminCommand::Status => true,
            AdminCommand::Promote { .. } => self == ClientRole::Operator,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paycore_engine::{CurrencyCode, UserId};

    #[test]
    fn each_role_allows_what_its_table_says() {
        let usd = CurrencyCode::parse("USD").expect("code");
        let register = Op::RegisterCurrency {
            code: usd,
            scale: 2,
        };
        let open = Op::OpenWallet {
            user: UserId(1),
            currency: usd,
        };
        let tier = Op::SetTier {
            user: UserId(1),
            tier: paycore_engine::Tier::default(),
        };
        for (role, register_ok, tier_ok, promote_ok) in [
            (ClientRole::Operator, true, true, true),
            (ClientRole::Gateway, true, true, false),
            (ClientRole::LoadGenerator, true, false, false),
            (ClientRole::ReadOnly, false, false, false),
        ] {
            assert_eq!(role.allows_op(&register), register_ok, "{role:?}");
            assert_eq!(role.allows_op(&tier), tier_ok, "{role:?}");
            assert_eq!(
                role.allows_op(&Op::Linked(vec![open.clone(), tier.clone()])),
                tier_ok && register_ok,
                "{role:?}: a group needs every operation allowed"
            );
            assert_eq!(
                role.allows_admin(&AdminCommand::Promote { force: false }),
                promote_ok
            );
            assert!(role.allows_admin(&AdminCommand::Status));
        }
    }

    #[test]
    fn a_certificate_names_its_role_and_one_naming_none_is_readonly() {
        for role in ClientRole::ALL {
            let made = rcgen::generate_simple_self_signed(vec![role.certificate_name()])
                .expect("certificate");
            assert_eq!(ClientRole::of_certificate(made.cert.der()), role);
        }
        let plain =
            rcgen::generate_simple_self_signed(vec!["client.example".into()]).expect("certificate");
        assert_eq!(
            ClientRole::of_certificate(plain.cert.der()),
            ClientRole::ReadOnly
        );
        let both = rcgen::generate_simple_self_signed(vec![
            ClientRole::ReadOnly.certificate_name(),
            ClientRole::Gateway.certificate_name(),
        ])
        .expect("certificate");
        assert_eq!(
            ClientRole::of_certificate(both.cert.der()),
            ClientRole::Gateway
        );
        assert_eq!(
            ClientRole::of_certificate(&CertificateDer::from(vec![1u8, 2, 3])),
            ClientRole::ReadOnly
        );
    }
}
