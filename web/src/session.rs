//! Signed-in sessions: a random id in an HttpOnly, SameSite=Strict cookie names a
//! session held in memory with the person's coordinator token (never sent back to the
//! browser) and the CSRF token every form carries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

/// Sessions held at once; the least recently used goes first beyond it.
pub const MAX_SESSIONS: usize = 10_000;
/// Sessions one identity may hold at once (one token cannot crowd out everyone's); its
/// least recently used goes first beyond it.
pub const MAX_SESSIONS_PER_IDENTITY: usize = 100;
/// Failed sign-ins one address may make per [`LOGIN_WINDOW`].
pub const MAX_FAILED_LOGINS: u32 = 10;
/// The window failed sign-ins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose sign-ins are counted at once; beyond it, new addresses wait for the
/// window to pass.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// One signed-in person.
pub struct Session {
    /// The identity the coordinator knows the token as.
    pub name: String,
    /// Its roles, as the coordinator reported them.
    pub roles: Vec<String>,
    /// Every form's hidden `csrf` field must equal this.
    pub csrf: String,
    token: String,
    last: Mutex<Instant>,
    idle: Duration,
    revoked: AtomicBool,
    ended: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The token calls are made with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether it may submit, cancel and retry (its own batches; all of them as admin).
    pub fn may_act(&self) -> bool {
        self.roles.iter().any(|r| r == "submitter" || r == "admin")
    }

    /// Ends this session (the coordinator no longer accepts its token, or it signed out):
    /// its next request is signed out, and its open live streams end.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Relaxed);
        self.ended.cancel();
    }

    /// Resolves when the session ends: revoked, signed out, evicted, or idle past its
    /// limit (what ends a live stream that outlives the pages' requests).
    pub async fn ended(&self) {
        loop {
            let deadline = *self.last_seen() + self.idle;
            tokio::select! {
                () = self.ended.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    if self.last_seen().elapsed() >= self.idle {
                        return;
                    }
                }
            }
        }
    }

    /// Whether it may act on a batch `owner` submitted.
    pub fn may_change(&self, owner: &str) -> bool {
        self.roles.iter().any(|r| r == "admin") || (self.may_act() && self.name == owner)
    }

    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_ok(&self, given: &str) -> bool {
        same_secret(&self.csrf, given)
    }
}

/// 32 random bytes, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing is not something to serve through.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    hex::encode(bytes)
}

/// The sessions of this process.
pub struct Sessions {
    by_id: Mutex<HashMap<String, Arc<Session>>>,
    idle: Duration,
}

impl Sessions {
    /// No sessions; each ends after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            idle,
        }
    }

    /// Starts a session; returns its id (the cookie's value) and the session.
    pub fn create(
        &self,
        name: String,
        roles: Vec<String>,
        token: String,
    ) -> (String, Arc<Session>) {
        let id = random_id();
        let session = Arc::new(Session {
            name,
            roles,
            csrf: random_id(),
            token,
            last: Mutex::new(Instant::now()),
            idle: self.idle,
            revoked: AtomicBool::new(false),
            ended: CancellationToken::new(),
        });
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| {
            let live = now.duration_since(*s.last_seen()) < self.idle;
            if !live {
                s.revoke();
            }
            live
        });
        let evict = |map: &mut HashMap<String, Arc<Session>>, same: Option<&str>| {
            let oldest = map
                .iter()
                .filter(|(_, s)| same.is_none_or(|n| s.name == n))
                .min_by_key(|(_, s)| *s.last_seen())
                .map(|(k, _)| k.clone());
            if let Some(s) = oldest.and_then(|k| map.remove(&k)) {
                s.revoke();
            }
        };
        if map.values().filter(|s| s.name == session.name).count() >= MAX_SESSIONS_PER_IDENTITY {
            evict(&mut map, Some(&session.name));
        }
        if map.len() >= MAX_SESSIONS {
            evict(&mut map, None);
        }
        map.insert(id.clone(), Arc::clone(&session));
        (id, session)
    }

    /// The live session `id` names, marked as used now.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.lock();
        let s = map.get(id)?;
        let now = Instant::now();
        let mut last = s.last.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(*last) >= self.idle || s.revoked.load(Ordering::Relaxed) {
            drop(last);
            if let Some(s) = map.remove(id) {
                s.revoke();
            }
            return None;
        }
        *last = now;
        drop(last);
        map.get(id).cloned()
    }

    /// Ends session `id` (sign-out), its live streams with it.
    pub fn remove(&self, id: &str) {
        if let Some(s) = self.lock().remove(id) {
            s.revoke();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Session {
    fn last_seen(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sign-in attempts per address (IPv6 by /64, what one host is usually given), so that
/// tokens cannot be guessed at speed. An attempt counts before the coordinator is asked,
/// so parallel tries cannot outrun the count; a success clears it.
#[derive(Default)]
pub struct LoginThrottle {
    attempts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The address attempts are counted under.
fn bucket(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
    }
}

impl LoginThrottle {
    /// Counts an attempt from `peer`; false when it has had its share this window.
    pub fn attempt(&self, peer: IpAddr) -> bool {
        let key = bucket(peer);
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, (_, since)| since.elapsed() < LOGIN_WINDOW);
            if map.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let entry = map.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOGIN_WINDOW {
            *entry = (0, Instant::now());
        }
        if entry.0 >= MAX_FAILED_LOGINS {
            return false;
        }
        entry.0 += 1;
        true
    }

    /// A sign-in from `peer` succeeded: its count starts again.
    pub fn succeeded(&self, peer: IpAddr) {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&bucket(peer));
    }
}

/// The cookies the interface sets, each a [`random_id`]: HttpOnly, SameSite=Strict, for
/// the whole site; over HTTPS `Secure` and named `__Host-…`, which browsers accept only
/// from this very host over HTTPS (no sibling domain can plant one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie {
    /// Names the signed-in session.
    Session,
    /// The sign-in form's nonce: the form must echo it (a page elsewhere cannot read
    /// it), so no other site can sign a browser in as someone else.
    SignIn,
}

impl Cookie {
    /// Its name (`secure`: served over HTTPS).
    pub fn name(self, secure: bool) -> &'static str {
        match (self, secure) {
            (Self::Session, true) => "__Host-stylefarm_session",
            (Self::Session, false) => "stylefarm_session",
            (Self::SignIn, true) => "__Host-stylefarm_signin",
            (Self::SignIn, false) => "stylefarm_signin",
        }
    }

    /// Its value in a `Cookie` header, if there in its own shape (64 hex digits).
    pub fn read(self, header: &str, secure: bool) -> Option<&str> {
        let name = self.name(secure);
        header.split(';').find_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            (k == name && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
        })
    }

    /// The `Set-Cookie` value that holds `value`.
    pub fn set(self, value: &str, secure: bool) -> String {
        let tail = if secure { "; Secure" } else { "" };
        let life = match self {
            Self::Session => "",
            Self::SignIn => "; Max-Age=3600",
        };
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict{life}{tail}",
            self.name(secure)
        )
    }

    /// The `Set-Cookie` value that removes it.
    pub fn clear(self, secure: bool) -> String {
        let tail = if secure { "; Secure" } else { "" };
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{tail}",
            self.name(secure)
        )
    }
}

/// Whether `a` and `b` are equal, compared in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_when_idle_or_removed_and_forms_need_the_csrf_token() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let (id, s) = sessions.create("alice".into(), vec!["submitter".into()], "sft_x".into());
        assert!(sessions.get(&id).is_some());
        assert!(s.csrf_ok(&s.csrf.clone()));
        assert!(!s.csrf_ok(""));
        assert!(!s.csrf_ok(&random_id()));
        assert!(
            !format!("{s:?}").contains("sft_x"),
            "the token is never printed"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&id).is_none(), "idle past its limit");
        let (id, s) = sessions.create("carol".into(), vec![], "t".into());
        s.revoke();
        assert!(sessions.get(&id).is_none(), "revoked");
        let (id, _) = sessions.create("bob".into(), vec![], "t".into());
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn who_may_change_what() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let role = |r: &str| vec![r.to_owned()];
        let (_, alice) = sessions.create("alice".into(), role("submitter"), "a".into());
        let (_, admin) = sessions.create("ops".into(), role("admin"), "b".into());
        let (_, worker) = sessions.create("render-7".into(), role("worker"), "c".into());
        assert!(alice.may_change("alice") && !alice.may_change("bob"));
        assert!(admin.may_change("bob"));
        assert!(!worker.may_act() && !worker.may_change("render-7"));
    }

    #[test]
    fn cookies_are_read_only_in_their_own_shape_and_host_bound_over_https() {
        let id = random_id();
        let c = Cookie::Session;
        assert_eq!(
            c.read(&format!("a=b; __Host-stylefarm_session={id}"), true),
            Some(id.as_str())
        );
        assert_eq!(
            c.read(&format!("stylefarm_session={id}"), true),
            None,
            "over HTTPS only the __Host- cookie counts"
        );
        assert_eq!(
            c.read(&format!("stylefarm_session={id}"), false),
            Some(id.as_str())
        );
        assert_eq!(c.read("stylefarm_session=../../etc", false), None);
        assert_eq!(
            Cookie::SignIn.read(&format!("stylefarm_session={id}"), false),
            None
        );
        let set = c.set(&id, true);
        assert!(
            set.starts_with("__Host-stylefarm_session=")
                && set.contains("Path=/; HttpOnly; SameSite=Strict")
        );
        assert!(
            set.ends_with("; Secure") && !set.contains("Domain"),
            "{set}"
        );
        assert!(!c.set(&id, false).contains("Secure"));
        assert!(c.clear(true).contains("Max-Age=0"));
    }

    #[test]
    fn one_identity_cannot_crowd_out_the_others_and_an_evicted_session_ends() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (bob, _) = sessions.create("bob".into(), vec![], "b".into());
        let (_, first) = sessions.create("mallory".into(), vec![], "m".into());
        for _ in 1..MAX_SESSIONS_PER_IDENTITY {
            sessions.create("mallory".into(), vec![], "m".into());
        }
        assert!(!first.ended.is_cancelled());
        sessions.create("mallory".into(), vec![], "m".into());
        assert!(
            first.ended.is_cancelled(),
            "mallory's oldest session made room for her newest"
        );
        assert!(sessions.get(&bob).is_some(), "bob's session is untouched");
        let mallory = sessions
            .lock()
            .values()
            .filter(|s| s.name == "mallory")
            .count();
        assert_eq!(mallory, MAX_SESSIONS_PER_IDENTITY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_for_its_streams_when_it_signs_out_or_idles() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, s) = sessions.create("alice".into(), vec![], "a".into());
        let ended = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.ended().await }
        });
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());
        sessions.remove(&id);
        tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .expect("ends at sign-out")
            .expect("task");
        let (_, idle) = sessions.create("carol".into(), vec![], "c".into());
        let waited = tokio::time::Instant::now();
        idle.ended().await;
        assert!(
            waited.elapsed() >= Duration::from_secs(59),
            "ends once idle past its limit"
        );
    }

    #[test]
    fn failed_sign_ins_are_throttled_per_address() {
        let t = LoginThrottle::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(t.attempt(a));
        }
        assert!(!t.attempt(a));
        assert!(t.attempt(b));
        t.succeeded(a);
        assert!(t.attempt(a), "a success starts the count again");
        // One IPv6 host's /64 is one address.
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 0..MAX_FAILED_LOGINS {
            assert!(t.attempt(host(u16::try_from(i).unwrap_or(0))));
        }
        assert!(!t.attempt(host(999)), "another address of the same /64");
    }
}
