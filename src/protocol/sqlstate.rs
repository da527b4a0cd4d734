//! Named SQLSTATE codes the proxy sends to clients.
//!
//! Owns: the constants. Must never: hold logic.

/// insufficient_privilege: policy denials.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// invalid_password: authentication failures.
pub const INVALID_PASSWORD: &str = "28P01";
/// invalid_authorization_specification: identity may not connect here.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// protocol_violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// connection_failure (upstream unreachable or gone).
pub const CONNECTION_FAILURE: &str = "08006";
/// sqlclient_unable_to_establish_sqlconnection.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// admin_shutdown: the proxy is draining or closed the session.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// invalid_catalog_name: unknown database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// io_error: the audit log cannot be written.
pub const IO_ERROR: &str = "58030";
/// idle_in_transaction_session_timeout.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// internal_error.
pub const INTERNAL_ERROR: &str = "XX000";
/// deadlock_detected.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// lock_not_available.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
