//! The protection of the HTTP surface from the web configuration file: basic auth with bcrypt
//! hashes, the response headers, the switches for `/health` and the landing page, and the
//! reload of all of it (certificates included) on SIGHUP without dropping the listener.
//! The server itself (accept, deadlines, the connection cap) is [`super::server`].
//!
//! bcrypt is slow on purpose (tens of milliseconds per check), and Prometheus sends the same
//! credentials every scrape, so results are cached by a SHA-256 of user, password and hash,
//! as the exporter toolkit does, verified and failed ones apart, and the bcrypt work is
//! bounded ([`Verifications`]). An unknown user is checked against a dummy hash so that the
//! answer takes as long as for a known one, and the final decision is combined in constant
//! time. The bcrypt work runs on the blocking pool, never on a runtime worker.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::server::TlsConfig;
use super::webconfig::{WebConfig, WebConfigError};

/// Verified credentials kept at most (then that cache starts over; only valid credentials
/// fill it).
const VERIFIED_LIMIT: usize = 256;
/// Failed credentials kept at most (then that cache starts over, leaving the verified ones).
const FAILED_LIMIT: usize = 1024;
/// bcrypt checks that run at once.
const BCRYPT_WORKERS: usize = 2;
/// bcrypt checks that may wait for a worker; more are refused at once.
const BCRYPT_QUEUE: usize = 32;

/// A bcrypt hash (cost 10, as `htpasswd -B`) that unknown users are checked against.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    bcrypt::hash(rand::random::<u64>().to_string(), 10).unwrap_or_default()
});

/// Errors of (re)loading the protection.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The web configuration file is wrong.
    #[error(transparent)]
    Config(#[from] WebConfigError),
    /// The change needs a restart.
    #[error("{file}: switching HTTPS on or off needs a restart; keeping the running settings")]
    NeedsRestart {
        /// The web configuration file.
        file: PathBuf,
    },
}

#[derive(Debug, Default)]
struct Rules {
    users: HashMap<String, String>,
    headers: Vec<(axum::http::HeaderName, HeaderValue)>,
    cache: Verifications,
}

/// The protection of the HTTP surface; cheap to share, reloadable.
#[derive(Debug)]
pub struct WebSecurity {
    file: Option<PathBuf>,
    rules: ArcSwap<Rules>,
    tls: Option<TlsConfig>,
    open_health: bool,
    landing_page: bool,
    /// Whether the listen address is a loopback address: `/debug/` is served there without
    /// users, since no other host reaches it.
    loopback: bool,
}

fn rules(config: &WebConfig) -> Rules {
    Rules {
        users: config.users.clone().into_iter().collect(),
        headers: config.headers.clone(),
        cache: Verifications::default(),
    }
}

impl WebSecurity {
    /// Loads `file` (none: an open plain-HTTP surface); `open_health` serves `/health` and
    /// `/ready` without credentials; `landing_page` false answers `/` with 404.
    pub fn load(
        file: Option<PathBuf>,
        open_health: bool,
        landing_page: bool,
    ) -> Result<Self, AuthError> {
        let (rules, tls) = match &file {
            None => (Rules::default(), None),
            Some(f) => {
                let config = WebConfig::load(f)?;
                let tls = config.server_config()?.map(|c| Arc::new(ArcSwap::new(c)));
                (rules(&config), tls)
            }
        };
        Ok(Self {
            file,
            rules: ArcSwap::from_pointee(rules),
            tls,
            open_health,
            landing_page,
            loopback: false,
        })
    }

    /// The security of a server listening on `listen`: on a loopback address `/debug/` needs
    /// no users (no other host reaches it); anywhere else only basic authentication opens it.
    pub fn serving_on(mut self, listen: std::net::SocketAddr) -> Self {
        self.loopback = listen.ip().is_loopback();
        self
    }

    /// Whether `/debug/` answers: behind basic authentication, or on a loopback address.
    fn debug_served(&self) -> bool {
        self.loopback || !self.rules.load().users.is_empty()
    }

    /// The HTTPS configuration, when the file asks for TLS.
    pub fn tls(&self) -> Option<TlsConfig> {
        self.tls.clone()
    }

    /// Reads the file and the certificates again (SIGHUP); `false` when there is no file. On
    /// any error the running settings stay; open connections and the listener are never
    /// dropped.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let config = WebConfig::load(file)?;
        let server = config.server_config()?;
        match (&self.tls, server) {
            (Some(tls), Some(new)) => tls.store(new),
            (None, None) => {}
            _ => return Err(AuthError::NeedsRestart { file: file.clone() }),
        }
        self.rules.store(Arc::new(rules(&config)));
        Ok(true)
    }

    /// Whether the credentials of an `Authorization` header are valid (always true when no
    /// users are configured).
    pub async fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let rules = self.rules.load_full();
        if rules.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let known = rules.users.get(&user).cloned();
        let hash = match &known {
            Some(h) => h.clone(),
            // The first use computes the dummy hash: on the blocking pool.
            None => tokio::task::spawn_blocking(|| DUMMY_HASH.clone())
                .await
                .unwrap_or_default(),
        };
        let key = cache_key(&user, &password, &hash);
        let verified = match rules.cache.lookup(&key) {
            Some(v) => v,
            None => {
                let Some(v) = rules.cache.verify(password, hash).await else {
                    return false;
                };
                rules.cache.remember(key, v);
                v
            }
        };
        let ok = u8::from(known.is_some()).ct_eq(&1) & u8::from(verified).ct_eq(&1);
        ok.into()
    }
}

/// The cache key of a (user, password, hash) triple.
fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut key = Sha256::new();
    for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
        key.update((part.len() as u64).to_be_bytes());
        key.update(part);
    }
    key.finalize().into()
}

/// Verification results and the bound on bcrypt work.
///
/// Verified credentials and failed ones are kept apart: a flood of distinct wrong passwords
/// fills and empties only the failure cache, never evicting the credentials a scraper sends
/// every scrape. bcrypt runs on at most [`BCRYPT_WORKERS`] blocking threads at once, and at
/// most [`BCRYPT_QUEUE`] checks wait for one; a check beyond that is refused at once (the
/// request answers 401), so a flood costs a bounded amount of CPU and memory and a scraper
/// whose credentials are cached is answered without waiting.
#[derive(Debug)]
struct Verifications {
    verified: Mutex<HashSet<[u8; 32]>>,
    failed: Mutex<HashSet<[u8; 32]>>,
    workers: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Default for Verifications {
    fn default() -> Self {
        Self {
            verified: Mutex::default(),
            failed: Mutex::default(),
            workers: tokio::sync::Semaphore::new(BCRYPT_WORKERS),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Verifications {
    fn lookup(&self, key: &[u8; 32]) -> Option<bool> {
        let hit =
            |set: &Mutex<HashSet<[u8; 32]>>| set.lock().map(|s| s.contains(key)).unwrap_or(false);
        if hit(&self.verified) {
            Some(true)
        } else if hit(&self.failed) {
            Some(false)
        } else {
            None
        }
    }

    fn remember(&self, key: [u8; 32], verified: bool) {
        let (set, limit) = if verified {
            (&self.verified, VERIFIED_LIMIT)
        } else {
            (&self.failed, FAILED_LIMIT)
        };
        if let Ok(mut s) = set.lock() {
            if s.len() >= limit {
                s.clear();
            }
            s.insert(key);
        }
    }

    /// bcrypt of `password` against `hash` on the blocking pool; `None` when too many
    /// checks are waiting already.
    async fn verify(&self, password: String, hash: String) -> Option<bool> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= BCRYPT_QUEUE + BCRYPT_WORKERS {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let permit = self.workers.acquire().await;
        let v = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        drop(permit);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Some(v)
    }
}

/// User and password of a `Basic` authorization header.
fn basic_credentials(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, encoded) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The middleware: landing page switch, `/debug/` only behind basic auth, basic auth,
/// response headers.
pub(crate) async fn guard(
    State(sec): State<Arc<WebSecurity>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let mut resp = if path == "/" && !sec.landing_page {
        (StatusCode::NOT_FOUND, "not found; try /metrics\n").into_response()
    } else if path.starts_with("/debug/") && !sec.debug_served() {
        // Sessions and statements are for operators only: never on a surface other hosts
        // reach without credentials.
        (
            StatusCode::NOT_FOUND,
            "not found: /debug/locks is served only behind basic authentication or on a \
             loopback listen address; set basic_auth_users in the web configuration file \
             (web.config_file)\n",
        )
            .into_response()
    } else if (sec.open_health && (path == "/health" || path == "/ready"))
        || sec
            .authorized(req.headers().get(header::AUTHORIZATION))
            .await
    {
        next.run(req).await
    } else {
        let mut r = Response::new(Body::from("Unauthorized\n"));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pgpulse\""),
        );
        r
    };
    let rules = sec.rules.load();
    for (name, value) in &rules.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

/// Wraps `router` in [`guard`].
pub(crate) fn protect(router: axum::Router, sec: Arc<WebSecurity>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(sec, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn security(users: &[(&str, &str)]) -> WebSecurity {
        let sec = WebSecurity::load(None, false, true).unwrap();
        let rules = Rules {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap()))
                .collect(),
            ..Rules::default()
        };
        sec.rules.store(Arc::new(rules));
        sec
    }

    #[test]
    fn basic_credentials_are_decoded_and_other_schemes_refused() {
        assert_eq!(
            basic_credentials(&header("u", "p:w")),
            Some(("u".to_owned(), "p:w".to_owned()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer abc")),
            None
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Basic !!!")),
            None
        );
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes_and_results_are_cached() {
        let sec = security(&[("prometheus", "right")]);
        assert!(!sec.authorized(None).await);
        assert!(!sec.authorized(Some(&header("prometheus", "wrong"))).await);
        assert!(!sec.authorized(Some(&header("stranger", "right"))).await);
        assert!(sec.authorized(Some(&header("prometheus", "right"))).await);
        assert!(sec.authorized(Some(&header("prometheus", "right"))).await);
        let rules = sec.rules.load();
        let verified = rules.cache.verified.lock().unwrap().len();
        let failed = rules.cache.failed.lock().unwrap().len();
        assert_eq!(
            (verified, failed),
            (1, 2),
            "one entry per distinct (user, password, hash)"
        );
    }

    #[tokio::test]
    async fn a_flood_of_wrong_passwords_never_evicts_the_verified_credentials() {
        let sec = security(&[("prometheus", "right")]);
        assert!(sec.authorized(Some(&header("prometheus", "right"))).await);
        for i in 0..FAILED_LIMIT + 10 {
            assert!(
                !sec.authorized(Some(&header("prometheus", &format!("w{i}"))))
                    .await
            );
        }
        let rules = sec.rules.load();
        assert!(rules.cache.failed.lock().unwrap().len() < FAILED_LIMIT);
        let hash = rules.users["prometheus"].clone();
        let key = cache_key("prometheus", "right", &hash);
        assert_eq!(rules.cache.lookup(&key), Some(true), "still cached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bcrypt_work_is_bounded_and_a_cached_scraper_never_waits_for_it() {
        let sec = Arc::new(security(&[("prometheus", "right")]));
        assert!(sec.authorized(Some(&header("prometheus", "right"))).await);
        let rules = sec.rules.load_full();
        // Every worker busy: checks queue up to the bound, the rest are refused at once.
        let held = rules
            .cache
            .workers
            .acquire_many(BCRYPT_WORKERS as u32)
            .await
            .unwrap();
        let flood = 100;
        let mut tasks = Vec::new();
        for i in 0..flood {
            let sec = sec.clone();
            tasks.push(tokio::spawn(async move {
                sec.authorized(Some(&header("prometheus", &format!("wrong{i}"))))
                    .await
            }));
        }
        let bound = BCRYPT_QUEUE + BCRYPT_WORKERS;
        // Until every check was admitted (it waits for a worker) or refused (it is done): a
        // check first polled after the workers are free would be admitted in a freed place.
        let refused = |tasks: &[tokio::task::JoinHandle<bool>]| {
            tasks.iter().filter(|t| t.is_finished()).count()
        };
        while rules
            .cache
            .waiting
            .load(std::sync::atomic::Ordering::SeqCst)
            < bound
            || refused(&tasks) < flood - bound
        {
            tokio::task::yield_now().await;
        }
        assert!(sec.authorized(Some(&header("prometheus", "right"))).await);
        assert_eq!(refused(&tasks), flood - bound, "refused at once");
        drop(held);
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        assert_eq!(rules.cache.failed.lock().unwrap().len(), bound);
    }

    #[tokio::test]
    async fn without_users_everything_is_open() {
        let sec = WebSecurity::load(None, false, true).unwrap();
        assert!(sec.authorized(None).await);
    }
}
