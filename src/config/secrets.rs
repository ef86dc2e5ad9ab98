//! Secrets from files, as Kubernetes and Docker mount them: `database.password_file`,
//! `database.url_file` (also `PGPULSE_DATABASE__PASSWORD_FILE`,
//! `PGPULSE_DATABASE__URL_FILE` and `PGPULSE_DATABASE_URL_FILE`), and libpq's password file
//! (`PGPASSFILE`, else `~/.pgpass`) when no password is given otherwise.
//!
//! A secret's value never enters an error message: errors name the file and the reason.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use super::ConfigError;

/// Reads a secret from `file` for the setting `key`; one trailing newline (`\n` or `\r\n`)
/// is dropped, as `echo secret > file` and Kubernetes secrets leave one.
pub(crate) fn read_secret_file(key: &'static str, file: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Invalid {
        key,
        reason: format!("{}: cannot read: {}", file.display(), e.kind()),
    })?;
    crate::db::connect::secret_value(&text)
        .map(str::to_owned)
        .map_err(|reason| ConfigError::Invalid {
            key,
            reason: format!("{}: {reason}", file.display()),
        })
}

/// The password file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub(crate) fn pgpass_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(f));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// Splits one `.pgpass` line into its five fields (`\:` and `\\` unescaped).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), out.last_mut()) {
                    f.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            other => {
                if let Some(f) = out.last_mut() {
                    f.push(other);
                }
            }
        }
    }
    out
}

/// The password of the first matching line of a `.pgpass` file for `config`'s first host,
/// port, database and user (`*` matches anything), as libpq finds it. A file readable by
/// group or others is ignored with a warning, like libpq does.
pub(crate) fn pgpass_password(file: &Path, config: &tokio_postgres::Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "password file has group or world access; ignored (chmod 0600)");
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let dbname = config.get_dbname().unwrap_or(&user).to_owned();
    let wanted = [host, port, dbname, user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .filter(|f| f.len() == 5)
        .find(|f| {
            f.iter()
                .zip(&wanted)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.remove(4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::str::FromStr;

    #[test]
    fn the_first_matching_pgpass_line_wins_and_wildcards_match() {
        let dir = std::env::temp_dir().join(format!("pgpulse-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        std::fs::write(
            &f,
            "# comment\nother:5432:*:u:nope\ndb.example:5432:trade:u:p\\:w\\\\1\n*:*:*:u:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = tokio_postgres::Config::from_str("postgres://u@db.example/trade").unwrap();
        assert_eq!(pgpass_password(&f, &c).as_deref(), Some("p:w\\1"));
        let c = tokio_postgres::Config::from_str("postgres://u@elsewhere:6000/x").unwrap();
        assert_eq!(pgpass_password(&f, &c).as_deref(), Some("fallback"));
        let c = tokio_postgres::Config::from_str("postgres://v@elsewhere/x").unwrap();
        assert_eq!(pgpass_password(&f, &c), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = tokio_postgres::Config::from_str("postgres://u@db.example/trade").unwrap();
        assert_eq!(
            pgpass_password(&f, &c),
            None,
            "a world-readable file is ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
