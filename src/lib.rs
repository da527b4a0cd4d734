//! tierwarden: a PostgreSQL wire-protocol proxy that makes environments
//! (dev → test → stage → prod) safety boundaries.
//!
//! Layout and data flow — one way:
//! `proxy::listener` accepts → `proxy::session` runs the phases
//! (`proxy::client_auth` with `auth`, `proxy::admission` with `policy`,
//! `proxy::upstream`) → `proxy::relay` moves messages, `proxy::inbound`
//! classifies and decides (`policy`), `proxy::tracker` keeps responses in
//! order, `proxy::observe_hooks` feeds `observe` (metrics) and `audit`.
//!
//! Leaves are pure and never import `proxy` or tokio networking:
//! `protocol` (wire format), `policy` (classifier, matrix, decide),
//! `config` (model, validation, guards), `auth` (SCRAM, TLS configs,
//! tokens, rate limiting). `shared` holds the state handed to sessions (no
//! globals, except `timers`: one timer thread for the process, because the
//! session runtimes have no time driver); `serve` runs the process; `cli`
//! is the command line; `quickstart` builds a throwaway four-environment
//! setup.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod cli_tools;
pub mod config;
pub mod marker;
pub mod observe;
pub mod policy;
pub mod promotion;
pub mod protocol;
pub mod proxy;
pub mod quickstart;
pub mod serve;
pub mod shared;
pub mod timers;
