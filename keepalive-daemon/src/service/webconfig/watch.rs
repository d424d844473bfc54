//! The configuration in force, reloaded when any file it was built from changes.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use log::{error, info};
use sha2::{Digest as _, Sha256};

use super::{WebConfig, load};

/// What identifies a file's version without reading it.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

/// The web configuration in force, reloaded when its files change.
pub struct Watched {
    path: PathBuf,
    state: Mutex<(Stamp, Arc<WebConfig>, Option<Instant>)>,
    pub tls_at_start: bool,
    limiter: Mutex<Bucket>,
    auth_cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypt_lock: Mutex<()>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Distinct credentials remembered; beyond this the cache starts over.
const AUTH_CACHE_MAX: usize = 1024;

impl Watched {
    pub fn load(path: &Path) -> Result<Arc<Watched>, String> {
        let config = load(path)?;
        let s = stamp(&config.files);
        let tls_at_start = config.tls.is_some();
        let burst = config.rate_limit.map_or(0, |(_, b)| b);
        Ok(Arc::new(Watched {
            path: path.to_path_buf(),
            state: Mutex::new((s, Arc::new(config), None)),
            tls_at_start,
            limiter: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
            }),
            auth_cache: Mutex::new(HashMap::new()),
            bcrypt_lock: Mutex::new(()),
        }))
    }

    /// The configuration to use now: reloaded first if any of its files changed.
    pub fn current(&self) -> Arc<WebConfig> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&st.1.files);
        if now == st.0 {
            return st.1.clone();
        }
        st.0 = now;
        match load(&self.path) {
            Ok(new) if new.tls.is_some() != self.tls_at_start => {
                error!(
                    "{}: turning TLS on or off needs a restart; keeping the previous web configuration",
                    self.path.display()
                );
            }
            Ok(new) => {
                info!(
                    "web config {} reloaded: {}",
                    self.path.display(),
                    new.summary()
                );
                // The file list may have grown (a CA file added): stamp what the new one names.
                st.0 = stamp(&new.files);
                st.1 = Arc::new(new);
                self.auth_cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            Err(e) => error!("{e}; keeping the previous web configuration"),
        }
        st.1.clone()
    }

    /// Takes a token from the bucket; false means answer 429.
    pub fn allow(&self, config: &WebConfig) -> bool {
        let Some((interval, burst)) = config.rate_limit else {
            return true;
        };
        let mut b = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() / interval.as_secs_f64();
        b.tokens = (b.tokens + refill).min(f64::from(burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks basic-auth credentials. bcrypt is slow by design, so results are cached per
    /// (user, hash, password) digest and one check runs at a time. An unknown user costs the
    /// same bcrypt as a known one, so timing does not tell which users exist.
    pub fn check_password(&self, config: &WebConfig, user: &str, password: &str) -> bool {
        let (hash, known) = match config.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => match config.users.values().next() {
                Some(h) => (h.as_str(), false),
                None => return false,
            },
        };
        let mut d = Sha256::new();
        for part in [user, hash, password] {
            d.update((part.len() as u64).to_le_bytes());
            d.update(part.as_bytes());
        }
        let key: [u8; 32] = d.finalize().into();
        if let Some(ok) = self
            .auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return *ok;
        }
        let ok = {
            let _one = self.bcrypt_lock.lock().unwrap_or_else(|e| e.into_inner());
            bcrypt::verify(password, hash).unwrap_or(false)
        } && known;
        let mut cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= AUTH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}
