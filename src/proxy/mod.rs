//! The proxy: listeners, sessions and the relay.
//!
//! Data flows one way: `listener` accepts → `session` runs the phases
//! (startup, `client_auth`, `admission`, `upstream`) → `relay` moves
//! messages both ways in one task (`race` polling only the direction that
//! was woken), with `inbound` deciding on the way in (`recent` remembering
//! the session's last texts and shapes), `tracker` keeping responses in order,
//! `outgoing` planning what each write sends, `signal` carrying kill and
//! drain requests and `observe_hooks` recording what happened.

pub mod admission;
pub mod cancel;
pub mod client_auth;
pub mod gatekeeper;
pub mod inbound;
pub mod listener;
pub mod names;
pub mod observe_hooks;
pub mod outgoing;
pub mod pool;
pub mod race;
pub mod recent;
pub mod relay;
pub mod session;
pub mod signal;
pub mod stream;
pub mod tracker;
pub mod upstream;
