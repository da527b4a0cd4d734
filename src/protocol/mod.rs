//! The PostgreSQL wire format, sans-IO.
//!
//! Owns: framing of the byte streams (type byte + length), the startup
//! packet, bounds-checked decoding of the few messages the proxy must read
//! (Query, Parse, Bind, Close, Execute, ErrorResponse, BackendKeyData,
//! ReadyForQuery) and encoding of the messages the proxy writes itself.
//! May use: bytes and pgwire (encoders only; its decoders are not
//! bounds-checked against hostile input). Must never: perform IO, know
//! about sessions, policy or configuration.

pub mod encode;
pub mod frame;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use frame::{Frame, FrameError};
