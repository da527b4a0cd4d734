//! Label values and label sets of every tierwarden metric.
//!
//! Owns the closed vocabularies of the `class`, `outcome`, `reason` and `code`
//! labels and the label-set structs. It may use only `prometheus_client`'s
//! encoding traits. It must never grow a label whose value comes from user
//! input: `env` and `role` are the only free strings, and both are bounded by
//! the configuration (never an identity, a statement, an address or an error
//! text). It is independent of the policy module on purpose: the session maps
//! the policy's classes onto [`ClassLabel`].

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write;

/// Implements `as_str`, `ALL` and `EncodeLabelValue` for a closed label enum.
macro_rules! closed_label {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in declaration order (index = `self as usize`).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exported label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

/// Statement class, as exported in the `class` label (SPEC §4 classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClassLabel {
    Read,
    Write,
    Ddl,
    Maintenance,
    Transaction,
    Session,
    Privileged,
    Unclassified,
}
closed_label!(ClassLabel {
    Read => "read",
    Write => "write",
    Ddl => "ddl",
    Maintenance => "maintenance",
    Transaction => "transaction",
    Session => "session",
    Privileged => "privileged",
    Unclassified => "unclassified",
});

/// Outcome of a statement (`tierwarden_queries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryOutcome {
    /// The upstream completed it.
    Ok,
    /// The upstream answered an error.
    Error,
    /// The policy refused it; it never reached the upstream.
    Denied,
}
closed_label!(QueryOutcome {
    Ok => "ok",
    Error => "error",
    Denied => "denied",
});

/// Outcome of a client connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnOutcome {
    /// Authenticated and handed to a session.
    Accepted,
    /// Authentication failed (the reason goes to `tierwarden_auth_failures_total`).
    AuthFailed,
    /// Refused before authentication (bad startup packet, replication, forbidden option, draining).
    Refused,
    /// Refused by a connection limit.
    Limited,
}
closed_label!(ConnOutcome {
    Accepted => "accepted",
    AuthFailed => "auth_failed",
    Refused => "refused",
    Limited => "limited",
});

/// Outcome of a migration transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationOutcome {
    Applied,
    Failed,
}
closed_label!(MigrationOutcome {
    Applied => "applied",
    Failed => "failed",
});

/// Why an authentication failed. Deliberately coarse: it never tells an
/// unknown identity apart from a wrong secret (that would make the metric an
/// identity oracle), and it never carries the identity itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailReason {
    /// Unknown identity or wrong password/SCRAM proof: indistinguishable on purpose.
    BadCredentials,
    /// A signed token failed verification (signature, expiry, env, claims).
    BadToken,
    /// The environment requires TLS and the client did not use it.
    TlsRequired,
    /// The identity's role has level `none` in this environment.
    LevelNone,
    /// Too many failures from the same source; refused before checking.
    RateLimited,
    /// Protocol violation during authentication (bad message, timeout).
    Protocol,
}
closed_label!(AuthFailReason {
    BadCredentials => "bad_credentials",
    BadToken => "bad_token",
    TlsRequired => "tls_required",
    LevelNone => "level_none",
    RateLimited => "rate_limited",
    Protocol => "protocol",
});

/// Lock-related errors returned by the upstream to a proxy session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockErrorCode {
    /// SQLSTATE 40P01 `deadlock_detected`.
    Deadlock,
    /// SQLSTATE 55P03 `lock_not_available` (NOWAIT, `lock_timeout`).
    LockNotAvailable,
}
closed_label!(LockErrorCode {
    Deadlock => "deadlock",
    LockNotAvailable => "lock_not_available",
});

impl LockErrorCode {
    /// Map an upstream SQLSTATE to a lock error, if it is one.
    pub fn from_sqlstate(code: &str) -> Option<Self> {
        match code {
            "40P01" => Some(Self::Deadlock),
            "55P03" => Some(Self::LockNotAvailable),
            _ => None,
        }
    }
}

/// `{env}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EnvLabels {
    pub env: String,
}

/// `{env, role}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabels {
    pub env: String,
    pub role: String,
}

/// `{env, role, class}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClassLabels {
    pub env: String,
    pub role: String,
    pub class: ClassLabel,
}

/// `{env, role, class, outcome}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueryLabels {
    pub env: String,
    pub role: String,
    pub class: ClassLabel,
    pub outcome: QueryOutcome,
}

/// `{env, outcome}` of connection attempts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    pub env: String,
    pub outcome: ConnOutcome,
}

/// `{env, outcome}` of migrations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MigrationLabels {
    pub env: String,
    pub outcome: MigrationOutcome,
}

/// `{env, reason}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthLabels {
    pub env: String,
    pub reason: AuthFailReason,
}

/// `{env, role, code}`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LockErrorLabels {
    pub env: String,
    pub role: String,
    pub code: LockErrorCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, c) in ClassLabel::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, o) in QueryOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        assert_eq!(ClassLabel::ALL.len(), 8);
        assert_eq!(AuthFailReason::ALL.len(), 6);
    }

    #[test]
    fn sqlstate_mapping() {
        assert_eq!(
            LockErrorCode::from_sqlstate("40P01"),
            Some(LockErrorCode::Deadlock)
        );
        assert_eq!(
            LockErrorCode::from_sqlstate("55P03"),
            Some(LockErrorCode::LockNotAvailable)
        );
        assert_eq!(LockErrorCode::from_sqlstate("40001"), None);
    }
}
