//! A throwaway PgBouncer in front of a throwaway cluster, for the demo and the tests.
//!
//! Owns finding the `pgbouncer` binary, writing its configuration and user list into a temp
//! dir, starting it on a free loopback port, and stopping it again: [`TempBouncer`]'s `Drop`
//! kills it and removes the directory, and a watchdog process does both when the owning
//! process dies without running destructors. As root, PgBouncer refuses to run, so it runs as
//! the `postgres` user through `runuser`, as the cluster does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cluster::{ClusterError, free_port, watchdog};

/// Settings of a throwaway PgBouncer.
#[derive(Debug, Clone)]
pub struct BouncerOptions {
    /// The PostgreSQL port behind it (127.0.0.1).
    pub backend_port: u16,
    /// `[databases]`: (name clients use, database on the server).
    pub databases: Vec<(String, String)>,
    /// Users and their passwords (`auth_file`, plain text).
    pub users: Vec<(String, String)>,
    /// `stats_users` (may read the console).
    pub stats_users: Vec<String>,
    /// `auth_type` (`scram-sha-256`, `md5`, `trust`).
    pub auth_type: String,
    /// `default_pool_size`.
    pub pool_size: u32,
    /// `max_client_conn`.
    pub max_client_conn: u32,
}

impl Default for BouncerOptions {
    fn default() -> Self {
        Self {
            backend_port: 0,
            databases: Vec::new(),
            users: vec![
                ("postgres".into(), "postgres".into()),
                ("pgpulse_stats".into(), "stats-secret".into()),
            ],
            stats_users: vec!["pgpulse_stats".into()],
            auth_type: "scram-sha-256".into(),
            pool_size: 2,
            max_client_conn: 100,
        }
    }
}

/// A running throwaway PgBouncer; killed and removed on drop.
#[derive(Debug)]
pub struct TempBouncer {
    dir: PathBuf,
    port: u16,
    run_as: Option<String>,
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ClusterError {
    move |source| ClusterError::Io { step, source }
}

/// The `pgbouncer` binary: PATH, then `/usr/sbin` (Debian's place, outside a user's PATH).
fn find_pgbouncer() -> Result<PathBuf, ClusterError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| ClusterError::Command {
            step: "find pgbouncer",
            output: "pgbouncer is not installed; install it (Debian: apt-get install pgbouncer, \
                     or scripts/setup)"
                .to_owned(),
        })
}

impl TempBouncer {
    /// Writes the configuration and starts PgBouncer; blocks until it accepts connections.
    pub fn start(opts: &BouncerOptions) -> Result<Self, ClusterError> {
        let exe = find_pgbouncer()?;
        let run_as = nix::unistd::Uid::effective()
            .is_root()
            .then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgpulse-pgbouncer-{}-", std::process::id()))
            .tempdir()
            .map_err(io("create the PgBouncer directory"))?
            .keep();
        let b = Self {
            dir,
            port: free_port()?,
            run_as,
        };
        b.write_files(opts)?;
        b.spawn_watchdog()?;
        b.launch(&exe)?;
        Ok(b)
    }

    fn write_files(&self, opts: &BouncerOptions) -> Result<(), ClusterError> {
        let mut ini = String::from("[databases]\n");
        for (name, db) in &opts.databases {
            ini.push_str(&format!(
                "{name} = host=127.0.0.1 port={} dbname={db}\n",
                opts.backend_port
            ));
        }
        let d = self.dir.display();
        ini.push_str(&format!(
            "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\n\
             auth_type = {}\nauth_file = {d}/users.txt\nstats_users = {}\n\
             pool_mode = transaction\ndefault_pool_size = {}\nmax_client_conn = {}\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            self.port,
            opts.auth_type,
            opts.stats_users.join(","),
            opts.pool_size,
            opts.max_client_conn,
        ));
        let users: String = opts
            .users
            .iter()
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        std::fs::write(self.dir.join("pgbouncer.ini"), ini).map_err(io("write pgbouncer.ini"))?;
        std::fs::write(self.dir.join("users.txt"), users).map_err(io("write the user list"))?;
        if let Some(user) = &self.run_as {
            let u = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or(ClusterError::NoServerUser)?;
            for p in [
                self.dir.clone(),
                self.dir.join("pgbouncer.ini"),
                self.dir.join("users.txt"),
            ] {
                std::os::unix::fs::chown(&p, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                    .map_err(io("hand the PgBouncer files to the server user"))?;
            }
        }
        Ok(())
    }

    /// Starts the daemon and waits (at most 60 s) until its port accepts connections.
    fn launch(&self, exe: &Path) -> Result<(), ClusterError> {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let out = cmd
            .arg("-d")
            .arg(self.dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .output()
            .map_err(io("start pgbouncer"))?;
        let log = || std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        if !out.status.success() {
            return Err(ClusterError::Command {
                step: "start pgbouncer",
                output: format!("{}{}", String::from_utf8_lossy(&out.stderr), log()),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(ClusterError::Command {
                    step: "wait for pgbouncer",
                    output: log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills PgBouncer (and its directory) once this process is gone, whatever way it ended.
    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        // Paths travel as positional arguments, never inside the script's text.
        const SCRIPT: &str = "pid=$1 dir=$2; \
             while kill -0 \"$pid\" 2>/dev/null; do sleep 1; done; \
             if [ -f \"$dir/pgbouncer.pid\" ]; then p=$(cat \"$dir/pgbouncer.pid\"); \
               kill -CONT \"$p\"; kill -KILL \"$p\"; fi 2>/dev/null; \
             rm -rf \"$dir\"";
        watchdog(
            "start the PgBouncer watchdog",
            SCRIPT,
            &[self.dir.as_os_str()],
        )
    }

    /// The running daemon's process id, from its pidfile.
    fn pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).ok()?;
        text.trim().parse().ok().map(Pid::from_raw)
    }

    /// Sends `signal` to the daemon (`SIGSTOP` hangs it: it accepts, never answers).
    pub fn signal(&self, signal: Signal) -> Result<(), ClusterError> {
        let pid = self.pid().ok_or(ClusterError::Command {
            step: "signal pgbouncer",
            output: "no pidfile: PgBouncer is not running".to_owned(),
        })?;
        kill(pid, signal).map_err(|e| ClusterError::Io {
            step: "signal pgbouncer",
            source: std::io::Error::from(e),
        })
    }

    /// Stops the daemon (SIGINT, a safe shutdown) and waits until it is gone.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        while kill(pid, None).is_ok() {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
        Ok(())
    }

    /// Starts it again on the same port (a restart: its totals begin from zero).
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        self.launch(&find_pgbouncer()?)
    }

    /// Its TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` through it as `user`, without a password.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}?connect_timeout=10",
            self.port
        )
    }
}

impl Drop for TempBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
