//! A throwaway PostgreSQL cluster started from the system's server binaries.
//!
//! Owns finding `initdb`/`pg_ctl`, creating a data directory in a temp dir, starting the
//! server on a free loopback port (never 5432) and tearing it down again. The demo and the
//! integration tests use it; both must leave nothing behind, so teardown happens twice over:
//! [`TempCluster`]'s `Drop` stops the server and removes the directory, and a small watchdog
//! process stops it when the owning process dies without running destructors (a `static`
//! cluster in a test binary, `SIGKILL`).
//!
//! As root, PostgreSQL refuses to run, so the server runs as the `postgres` user through
//! `runuser` and the directory is handed to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors of starting or using a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The PostgreSQL server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH, `pg_config --bindir` or \
         /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install postgresql` on Debian"
    )]
    BinariesNotFound,
    /// Running as root, but no unprivileged `postgres` user exists to run the server.
    #[error(
        "running as root and no `postgres` user exists to run the server; create one or run as a normal user"
    )]
    NoServerUser,
    /// A command failed; its output is attached.
    #[error("{step} failed: {output}")]
    Command {
        /// What was being done.
        step: &'static str,
        /// The command's combined output (trimmed).
        output: String,
    },
    /// An I/O error while preparing the cluster.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Settings of a throwaway cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Preload `pg_stat_statements` (`shared_preload_libraries`).
    pub preload_pg_stat_statements: bool,
    /// `shared_buffers`, e.g. `"128MB"`; tiny values make cache misses easy to induce.
    pub shared_buffers: String,
    /// `max_connections`.
    pub max_connections: u32,
    /// Extra `-c name=value` server settings.
    pub extra_settings: Vec<(String, String)>,
    /// Replaces `pg_hba.conf` (e.g. `hostssl` lines for TLS tests); `None` keeps initdb's
    /// trust for local and loopback connections.
    pub hba: Option<String>,
    /// Files written into the data directory before start (e.g. `server.crt`,
    /// `server.key` for `ssl=on`), owned by the server user with mode 0600.
    pub data_files: Vec<(String, Vec<u8>)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            preload_pg_stat_statements: true,
            shared_buffers: "128MB".to_owned(),
            max_connections: 100,
            extra_settings: Vec::new(),
            hba: None,
            data_files: Vec::new(),
        }
    }
}

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct TempCluster {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<String>,
    stopped: bool,
}

/// Finds the directory holding `initdb` and `pg_ctl`: PATH, `pg_config --bindir`, then
/// the newest `/usr/lib/postgresql/*/bin`.
///
/// `PGPULSE_PG_BINDIR` picks the directory explicitly (e.g. another PostgreSQL version);
/// when set, it is the only place looked at.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PGPULSE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesNotFound)
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                return Ok(d);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_both(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|d| has_both(d))
        .ok_or(ClusterError::BinariesNotFound)
}

/// Picks a free TCP port on 127.0.0.1 (the OS chooses; never 5432).
pub fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| ClusterError::Io {
        step: "pick a free port",
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| ClusterError::Io {
            step: "pick a free port",
            source,
        })
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(user).ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// Starts `script` under `sh` with this process's id as `$1` and `args` as `$2`...: a
/// watchdog that cleans up once this process is gone, whatever way it ended. Paths travel as
/// positional arguments, never inside the script's text.
pub(super) fn watchdog(
    step: &'static str,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> Result<(), ClusterError> {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("pgpulse-watchdog")
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|source| ClusterError::Io { step, source })
}

impl TempCluster {
    /// Creates and starts a cluster; blocks until it accepts connections.
    pub fn start(opts: &ClusterOptions) -> Result<Self, ClusterError> {
        let bindir = find_bindir()?;
        let run_as = if is_root() {
            Some("postgres".to_owned())
        } else {
            None
        };
        let io = |step| move |source| ClusterError::Io { step, source };
        // Removed by Drop or, if this process dies first, by the watchdog.
        let dir = tempfile::Builder::new()
            .prefix("pgpulse-pg-")
            .tempdir()
            .map_err(io("create the cluster directory"))?
            .keep();
        let mut cluster = Self {
            bindir,
            dir,
            port: 0,
            run_as,
            stopped: true,
        };
        if let Some(user) = &cluster.run_as {
            let (uid, gid) = user_ids(user).ok_or(ClusterError::NoServerUser)?;
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .map_err(io("hand the cluster directory to the server user"))?;
        }
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_buffers = '{}'\nmax_connections = {}\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\ntrack_io_timing = on\n\
             log_min_messages = warning\ntimezone = 'UTC'\n",
            cluster.dir.display(),
            opts.shared_buffers,
            opts.max_connections
        );
        if opts.preload_pg_stat_statements {
            conf.push_str(
                "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
            );
        }
        for (k, v) in &opts.extra_settings {
            conf.push_str(&format!("{k} = '{v}'\n"));
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).map_err(io("write the server settings"))?;
        cluster.write_data_files(opts)?;
        cluster.spawn_watchdog()?;
        // Retry on a port race: another process may take the port between pick and bind.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    return Ok(cluster);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::BinariesNotFound))
    }

    /// Writes `pg_hba.conf` and the extra files of `opts`, readable by the server only.
    fn write_data_files(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.join("data");
        let hba = opts
            .hba
            .as_ref()
            .map(|h| ("pg_hba.conf".to_owned(), h.clone().into_bytes()));
        for (name, content) in opts.data_files.iter().cloned().chain(hba) {
            let path = data.join(&name);
            let step = "write a file into the data directory";
            std::fs::write(&path, content).map_err(|source| ClusterError::Io { step, source })?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| ClusterError::Io { step, source })?;
            if let Some(user) = &self.run_as {
                let (uid, gid) = user_ids(user).ok_or(ClusterError::NoServerUser)?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|source| ClusterError::Io { step, source })?;
            }
        }
        Ok(())
    }

    /// Creates and starts a streaming standby of `primary`: `pg_basebackup -R` through a new
    /// physical replication slot `slot` (created by pg_basebackup, so the primary retains WAL
    /// for the standby from the start); blocks until it accepts connections. The primary needs
    /// `wal_level = replica` (the default) and a free WAL sender.
    pub fn standby_of(primary: &TempCluster, slot: &str) -> Result<Self, ClusterError> {
        let dir = std::env::temp_dir().join(format!(
            "pgpulse-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let io = |step| move |source| ClusterError::Io { step, source };
        std::fs::create_dir_all(&dir).map_err(io("create the standby directory"))?;
        let mut standby = Self {
            bindir: primary.bindir.clone(),
            dir,
            port: 0,
            run_as: primary.run_as.clone(),
            stopped: true,
        };
        if let Some(user) = &standby.run_as {
            let (uid, gid) = user_ids(user).ok_or(ClusterError::NoServerUser)?;
            std::os::unix::fs::chown(&standby.dir, Some(uid), Some(gid))
                .map_err(io("hand the standby directory to the server user"))?;
        }
        // Removes the directory if the base backup fails; the watchdog only starts after it.
        let data = standby.dir.join("data");
        standby.run(
            "pg_basebackup",
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        // The copied settings point at the primary's socket directory: use our own.
        let conf_path = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\nhot_standby = on\n",
            standby.dir.display()
        ));
        std::fs::write(&conf_path, conf).map_err(io("write the standby settings"))?;
        standby.spawn_watchdog()?;
        let mut last = None;
        for _ in 0..5 {
            standby.port = free_port()?;
            match standby.pg_ctl_start() {
                Ok(()) => {
                    standby.stopped = false;
                    return Ok(standby);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::BinariesNotFound))
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl start",
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &format!("-p {}", self.port),
            ],
        )
        .map_err(|e| match e {
            ClusterError::Command { step, output } => ClusterError::Command {
                step,
                output: format!(
                    "{output}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            },
            other => other,
        })
    }

    /// Starts a process that stops the cluster and removes its directory once this process
    /// is gone, whatever way it ended.
    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        // Paths travel as positional arguments, never inside the script's text.
        const SCRIPT: &str = "pid=$1 dir=$2 pg_ctl=$3 user=$4; \
             while kill -0 \"$pid\" 2>/dev/null; do sleep 1; done; \
             if [ -f \"$dir/data/postmaster.pid\" ]; then \
               if [ -n \"$user\" ]; then runuser -u \"$user\" -- \"$pg_ctl\" stop -m immediate -D \"$dir/data\"; \
               else \"$pg_ctl\" stop -m immediate -D \"$dir/data\"; fi >/dev/null 2>&1; \
             fi; \
             rm -rf \"$dir\"";
        let pg_ctl = self.bindir.join("pg_ctl");
        let user = self.run_as.as_deref().unwrap_or("");
        watchdog(
            "start the cluster watchdog",
            SCRIPT,
            &[self.dir.as_os_str(), pg_ctl.as_os_str(), user.as_ref()],
        )
    }

    /// A server binary: from the bindir, else next to the file `initdb` links to (a bindir of
    /// symlinks to initdb and pg_ctl only), else from PATH.
    fn program(&self, name: &str) -> PathBuf {
        let direct = self.bindir.join(name);
        if direct.is_file() {
            return direct;
        }
        std::fs::canonicalize(self.bindir.join("initdb"))
            .ok()
            .and_then(|real| real.parent().map(|d| d.join(name)))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    fn run(&self, step: &'static str, program: &str, args: &[&str]) -> Result<(), ClusterError> {
        let exe = self.program(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ClusterError::Io { step, source })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Command {
                step,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .trim()
                .to_owned(),
            })
        }
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data directory, socket, server log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database` as the superuser `postgres` (trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?connect_timeout=10",
            self.port
        )
    }

    /// Stops the server (fast shutdown), keeping the directory; `start_again` restarts it.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        let data = self.dir.join("data");
        self.run(
            "pg_ctl stop",
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", &data.to_string_lossy()],
        )?;
        self.stopped = true;
        Ok(())
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        if !self.stopped {
            return Ok(());
        }
        self.pg_ctl_start()?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let data = self.dir.join("data");
            let _ = self.run(
                "pg_ctl stop",
                "pg_ctl",
                &[
                    "stop",
                    "-w",
                    "-m",
                    "immediate",
                    "-D",
                    &data.to_string_lossy(),
                ],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
