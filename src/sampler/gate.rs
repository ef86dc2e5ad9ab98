//! Gating: whether a query of the catalog runs on this server, from what the probe learnt
//! (server version, installed extensions, preloaded libraries), and whether this target
//! samples its server's server-wide queries (see [`crate::db::server`]). A gated query is disabled,
//! not failing: its series go and `pgpulse_query_enabled` says 0.

use crate::catalog::QuerySpec;

use super::probe::ServerInfo;

/// Why `spec` cannot run on the server of `server_version_num` `version` described by
/// `server`, if it cannot.
pub(crate) fn check(
    spec: &QuerySpec,
    version: i64,
    server: &ServerInfo,
    seat: &crate::db::server::Seat,
) -> Option<String> {
    if spec.scope == crate::catalog::Scope::Server
        && let Some(leader) = seat.leader().filter(|_| !seat.leads())
    {
        return Some(format!(
            "server-wide: sampled through target {leader}, which reaches the same server"
        ));
    }
    let v = i32::try_from(version).unwrap_or(i32::MAX);
    if let Some(min) = spec.min_server_version
        && v < min
    {
        return Some(format!("server version {v} is below {min}"));
    }
    if let Some(max) = spec.max_server_version
        && v > max
    {
        return Some(format!("server version {v} is above {max}"));
    }
    match (spec.role, server.in_recovery()) {
        (crate::catalog::Role::Primary, true) => return Some("the server is a standby".into()),
        (crate::catalog::Role::Replica, false) => return Some("the server is a primary".into()),
        _ => {}
    }
    let (exts, preload) = server.features();
    if let Some(e) = &spec.requires_extension
        && !exts.contains(e)
    {
        return Some(format!(
            "extension {e} is not installed (CREATE EXTENSION {e})"
        ));
    }
    if let Some(p) = &spec.requires_preload
        && !preload.iter().any(|l| l == p)
    {
        return Some(format!(
            "{p} is not in shared_preload_libraries (add it and restart PostgreSQL)"
        ));
    }
    None
}
