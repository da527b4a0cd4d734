//! Admission of an authenticated client: database name, replication,
//! level, break-glass token, connection limits and startup-packet settings
//! (each `-c` in `options` and every extra parameter goes through the same
//! policy as a SET). Also opens the upstream session with the right login.
//!
//! Owns: the decisions between authentication and the relay. Must never:
//! forward a startup setting the policy has not allowed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pool::PoolKey;
use super::session::Fatal;
use super::upstream::{self, Upstream, UpstreamError, UpstreamTarget};
use crate::audit::{AuditRecord, EventKind, Outcome};
use crate::auth::token::TokenClaims;
use crate::policy::{decide, Decision, Level, Subject};
use crate::protocol::sqlstate;
use crate::shared::{EnvRuntime, EnvState, Runtime, Shared};

use super::client_auth::Login;
use super::relay::RelayEnd;

/// Startup parameters handled by the proxy itself, never forwarded as settings.
const PROXY_PARAMS: &[&str] = &["user", "database", "options", "replication"];

/// A client that may start a session.
pub struct Admitted {
    /// Who.
    pub login: Login,
    /// Effective: a controlled session with a valid token writes.
    pub break_glass: bool,
    /// Role flagged `migrations = true`.
    pub migrations_role: bool,
    /// Upstream login key (`ro`, `rw`, `migrate`).
    pub upstream_key: &'static str,
    /// Settings forwarded in the upstream startup packet.
    pub upstream_params: Vec<(String, String)>,
    /// A warning shown to the client after login.
    pub warning: Option<String>,
    /// When the session must end (token expiry).
    pub expires: Option<SystemTime>,
    /// Token claims (for audit).
    pub token: Option<TokenClaims>,
    _slot: Slot,
}

impl Admitted {
    /// The policy subject for this session.
    pub fn subject<'a>(&'a self, env: &'a EnvRuntime) -> Subject<'a> {
        Subject {
            role: &self.login.role,
            env: &env.name,
            tier: env.tier(),
            level: self.login.level,
            break_glass: self.break_glass,
            migrations_role: self.migrations_role,
        }
    }
}

/// Holds one connection slot of the environment and the role.
struct Slot {
    state: Arc<EnvState>,
    role: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.sessions.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut n) = self.state.per_role.get_mut(&self.role) {
            *n = n.saturating_sub(1);
        }
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Checks that need no identity: replication and the database name.
pub fn precheck(params: &[(String, String)], env: &EnvRuntime) -> Result<(), Fatal> {
    if let Some(r) = param(params, "replication") {
        if !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ) {
            return Err(Fatal::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "tierwarden: replication connections are not allowed through the proxy",
            ));
        }
    }
    let user = param(params, "user").unwrap_or("");
    let db = param(params, "database").unwrap_or(user);
    let up = &env.cfg.upstream.database;
    if db != up.as_str() && db != &*env.name {
        return Err(Fatal {
            code: sqlstate::INVALID_CATALOG_NAME,
            message: format!("database \"{db}\" does not exist"),
            hint: Some(format!(
                "tierwarden environment {} serves database \"{up}\" (also reachable as \"{}\"); check that the client points at the right environment",
                env.name, env.name
            )),
        });
    }
    Ok(())
}

/// Split a libpq `options` string into `(name, value)` settings; anything
/// other than `-c name=value` / `--name=value` is refused.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("-c without a setting")?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_string()
        } else {
            return Err(format!(
                "unsupported option {w:?}: only -c name=value is accepted"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?} is not name=value"))?;
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// Decide whether `login` may open a session, and with which settings.
pub fn admit(
    login: Login,
    params: &[(String, String)],
    env: &Arc<EnvRuntime>,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Admitted, Fatal> {
    if login.level == Level::None {
        shared
            .metrics
            .connection_attempt(&env.name, crate::observe::labels::ConnOutcome::Refused);
        shared
            .metrics
            .auth_failure(&env.name, crate::observe::labels::AuthFailReason::LevelNone);
        return Err(Fatal {
            code: sqlstate::INVALID_AUTHORIZATION,
            message: format!(
                "tierwarden: role {} has no access to environment {} (level none)",
                login.role, env.name
            ),
            hint: Some("ask for a role whose level in this environment is not none".into()),
        });
    }
    let role_cfg = rt.config.roles.get(&login.role);
    let migrations_role = role_cfg.map(|r| r.migrations).unwrap_or(false);
    let (break_glass, warning, expires) = token_effect(&login, env);
    let mut adm = Admitted {
        upstream_key: "ro",
        upstream_params: Vec::new(),
        break_glass,
        migrations_role,
        warning,
        expires,
        token: login.token.clone(),
        _slot: take_slot(&login.role, env, shared)?,
        login,
    };
    adm.upstream_key = match (adm.login.level, adm.break_glass) {
        (Level::Rw, _) | (Level::Controlled, true) => "rw",
        (Level::Migrate, _) => "migrate",
        _ => "ro",
    };
    let mut settings: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !PROXY_PARAMS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(o) = param(params, "options") {
        settings.extend(parse_options(o).map_err(|m| {
            Fatal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("tierwarden: denied: startup options: {m}"),
            )
        })?);
    }
    let subject = adm.subject(env);
    for (k, v) in &settings {
        let stmt = rt.classifier.classify_setting(k, v);
        if let Decision::Deny(d) = decide(&stmt, &subject) {
            return Err(Fatal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: format!("tierwarden: denied: startup setting {k}={v}: {}", d.message),
                hint: Some(d.hint),
            });
        }
    }
    let read_only = adm.upstream_key == "ro";
    settings
        .retain(|(k, _)| !(read_only && k.eq_ignore_ascii_case("default_transaction_read_only")));
    if read_only {
        settings.push(("default_transaction_read_only".into(), "on".into()));
    }
    adm.upstream_params = settings;
    Ok(adm)
}

type TokenEffect = (bool, Option<String>, Option<SystemTime>);

/// What a verified token does to the session (client authentication has
/// already checked its signature, identity, environment, expiry, role and,
/// in production, its reason).
fn token_effect(login: &Login, env: &EnvRuntime) -> TokenEffect {
    let Some(t) = &login.token else {
        return (false, None, None);
    };
    let glass = login.level == Level::Controlled;
    let warning = glass.then(|| {
        format!(
            "tierwarden: break-glass session in {} (reason: {}); every statement is audited; the session ends when the token expires",
            env.name,
            t.reason.as_deref().unwrap_or("-")
        )
    });
    (glass, warning, Some(SystemTime::from(t.expires_at)))
}

fn take_slot(role: &str, env: &EnvRuntime, shared: &Shared) -> Result<Slot, Fatal> {
    let state = shared
        .state(&env.name)
        .cloned()
        .ok_or_else(|| Fatal::new(sqlstate::INTERNAL_ERROR, "environment state missing"))?;
    let refuse = |what: String| {
        shared
            .metrics
            .connection_attempt(&env.name, crate::observe::labels::ConnOutcome::Limited);
        Fatal::new(sqlstate::TOO_MANY_CONNECTIONS, what)
    };
    let n = state.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = Slot {
        state: Arc::clone(&state),
        role: role.to_string(),
    };
    {
        let mut r = state.per_role.entry(role.to_string()).or_insert(0);
        *r += 1;
        if let Some(max) = env.cfg.max_connections_per_role.get(role) {
            if *r > *max {
                drop(r);
                return Err(refuse(format!(
                    "tierwarden: too many connections for role {role} in environment {} (max {max})",
                    env.name
                )));
            }
        }
    }
    if let Some(max) = env.cfg.max_connections {
        if n > max {
            return Err(refuse(format!(
                "tierwarden: too many connections for environment {} (max {max})",
                env.name
            )));
        }
    }
    Ok(slot)
}

/// The pool key of an admitted client's upstream session.
pub fn pool_key(adm: &Admitted, env: &EnvRuntime) -> PoolKey {
    let mut params = adm.upstream_params.clone();
    params.sort();
    (Arc::clone(&env.name), adm.upstream_key, params)
}

/// The upstream session for an admitted client: an idle one from the pool,
/// or a new one.
pub async fn connect_upstream(
    adm: &Admitted,
    env: &EnvRuntime,
    rt: &Runtime,
    shared: &Shared,
) -> Result<Upstream, UpstreamError> {
    if let Some(up) = shared.pool.take(&pool_key(adm, env)) {
        return Ok(up);
    }
    let login = env
        .logins
        .get(adm.upstream_key)
        .ok_or_else(|| UpstreamError::Protocol(format!("no upstream {} user", adm.upstream_key)))?;
    let timeout = Duration::from_millis(rt.config.proxy.upstream_connect_timeout_ms);
    let target = UpstreamTarget::new(env, login, timeout);
    // Read before connecting: a reload during the connect makes the
    // session one of the old configuration.
    let generation = shared.pool.generation();
    let mut up = match upstream::connect(&target, &adm.upstream_params).await {
        Err(e) if server_full(&e) => {
            if !make_room(env, rt, shared).await {
                return Err(e);
            }
            retry_full(&target, &adm.upstream_params).await?
        }
        r => r?,
    };
    up.generation = generation;
    Ok(up)
}

/// Whether the upstream refused a session for want of a slot (53300:
/// `max_connections`, or a role's or database's connection limit).
fn server_full(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Refused { code, .. } if code == sqlstate::TOO_MANY_CONNECTIONS)
}

/// The server is full: the idle sessions this proxy keeps on that server
/// (any environment there) may be what fills it. Close them; whether
/// there were any.
async fn make_room(env: &EnvRuntime, rt: &Runtime, shared: &Shared) -> bool {
    let server = (&env.cfg.upstream.host, env.cfg.upstream.port);
    let same_server: Vec<&str> = rt
        .envs
        .values()
        .filter(|e| (&e.cfg.upstream.host, e.cfg.upstream.port) == server)
        .map(|e| &*e.name)
        .collect();
    let idle = shared.pool.take_idle_of(&same_server);
    if idle.is_empty() {
        return false;
    }
    tracing::info!(
        env = %env.name,
        closed = idle.len(),
        "upstream refused a new session (53300): closing idle pooled sessions on that server"
    );
    super::pool::terminate_all(idle).await;
    true
}

/// Connect again after `make_room`: a closed backend frees its slot when
/// its process has exited, a few milliseconds after the Terminate, so a
/// refusal with 53300 is retried a few times (10, 20, 40, 80, 160 ms).
async fn retry_full(
    target: &UpstreamTarget<'_>,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut wait = Duration::from_millis(10);
    loop {
        crate::timers::sleep(wait).await;
        match upstream::connect(target, params).await {
            Err(e) if server_full(&e) && wait < Duration::from_millis(160) => wait *= 2,
            r => return r,
        }
    }
}

fn base_record(kind: EventKind, env: &EnvRuntime, adm: &Admitted, outcome: Outcome) -> AuditRecord {
    let mut r = AuditRecord::new(kind, &*env.name, &adm.login.identity, outcome);
    r.role = Some(adm.login.role.clone());
    r.level = Some(adm.login.level.as_str().to_string());
    if let Some(t) = &adm.token {
        r.token_id = Some(t.id.clone());
        r.token_reason = t.reason.clone();
    }
    r
}

/// Audit a session start (and the break-glass use, when there is one).
pub fn audit_connect(shared: &Shared, env: &EnvRuntime, adm: &Admitted, peer: SocketAddr) {
    let Some(a) = &shared.audit else { return };
    let mut r = base_record(EventKind::Connect, env, adm, Outcome::Ok);
    r.peer = Some(peer.to_string());
    let _ = a.log(r);
    if adm.break_glass {
        let mut r = base_record(EventKind::BreakGlass, env, adm, Outcome::Ok);
        r.peer = Some(peer.to_string());
        r.detail = Some("controlled level raised to rw (no ddl) by token".into());
        let _ = a.log(r);
    }
}

/// Audit a session end.
pub fn audit_disconnect(
    shared: &Shared,
    env: &EnvRuntime,
    adm: &Admitted,
    peer: SocketAddr,
    length: Duration,
    end: &RelayEnd,
) {
    let Some(a) = &shared.audit else { return };
    let mut r = base_record(EventKind::Disconnect, env, adm, Outcome::Ok).with_duration(length);
    r.peer = Some(peer.to_string());
    r.detail = Some(end.to_string());
    let _ = a.log(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_like_libpq() {
        assert_eq!(
            parse_options("-c search_path=app -cstatement_timeout=5s --work-mem=4MB").unwrap(),
            vec![
                ("search_path".into(), "app".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "4MB".into())
            ]
        );
        assert_eq!(
            parse_options(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(parse_options("-B 100").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
    }
}
