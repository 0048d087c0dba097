//! Who is calling, and what they may do: the identity behind each call's bearer token
//! (from the tokens file, re-read when it changes), and the checks each RPC makes.
//!
//! | caller    | worker service | submit, read, watch | cancel, retry          |
//! |-----------|----------------|---------------------|------------------------|
//! | worker    | yes            | no                  | no                     |
//! | submitter | no             | yes (up to its max priority) | its own batches |
//! | admin     | yes            | yes                 | every batch            |
//!
//! A missing or unknown token is `UNAUTHENTICATED`; a known one without the right is
//! `PERMISSION_DENIED`. Tokens never reach a log or an error message.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};
use stylefarm_net::token::{TokenError, MAX_TOKEN};
use stylefarm_net::{Identity, Role, Tokens};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::grpc::ApiError;

/// The identity every caller has when the coordinator runs without a tokens file
/// (`--insecure`): an admin.
pub const ANONYMOUS: &str = "anonymous";

/// The identities the coordinator knows.
pub struct Auth {
    source: Source,
    tokens: RwLock<Arc<Tokens>>,
}

enum Source {
    /// No tokens file: every caller is [`ANONYMOUS`].
    Open,
    /// Fixed at start (a coordinator embedded in `stylefarm run`).
    Fixed,
    /// A tokens file and the hash of the text last loaded from it.
    File(PathBuf, Mutex<[u8; 32]>),
}

impl Auth {
    /// No authentication: every caller is the anonymous admin.
    pub fn open() -> Self {
        Self {
            source: Source::Open,
            tokens: RwLock::default(),
        }
    }

    /// These identities, for good.
    pub fn fixed(tokens: Tokens) -> Self {
        Self {
            source: Source::Fixed,
            tokens: RwLock::new(Arc::new(tokens)),
        }
    }

    /// The identities of a tokens file; [`Auth::reload`] re-reads it.
    pub fn from_file(path: PathBuf) -> Result<Self, TokenError> {
        let (tokens, hash) = load(&path)?;
        if tokens.is_empty() {
            return Err(TokenError::Name(format!(
                "{} holds no identities: add one with `stylefarm-coordinator token add NAME --role ROLE --tokens-file {}`",
                path.display(),
                path.display()
            )));
        }
        Ok(Self {
            source: Source::File(path, Mutex::new(hash)),
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Re-reads the tokens file. `Ok(Some(n))`: it changed and now holds `n` identities;
    /// `Ok(None)`: unchanged (or there is no file); an error keeps the identities in use.
    pub fn reload(&self) -> Result<Option<usize>, TokenError> {
        let Source::File(path, last) = &self.source else {
            return Ok(None);
        };
        let (tokens, hash) = load(path)?;
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == hash {
            return Ok(None);
        }
        if tokens.is_empty() {
            // Most likely caught mid-rewrite; an empty file locks everyone out.
            return Err(TokenError::Name(format!(
                "{} now holds no identities; keeping the ones loaded (to let nobody in, stop the coordinator)",
                path.display()
            )));
        }
        *last = hash;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(Some(n))
    }

    /// Whether there is a file to re-read.
    pub fn reloadable(&self) -> bool {
        matches!(self.source, Source::File(..))
    }

    /// The caller a request's metadata proves.
    pub fn identify(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Arc<Identity>, ApiError> {
        if matches!(self.source, Source::Open) {
            return Ok(anonymous());
        }
        let value = metadata
            .get("authorization")
            .ok_or(ApiError::Unauthenticated("no bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110).
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|t| t.len() <= MAX_TOKEN)
            .ok_or(ApiError::Unauthenticated(
                "the authorization header is not `Bearer TOKEN`",
            ))?;
        let tokens = Arc::clone(&self.tokens.read().unwrap_or_else(|p| p.into_inner()));
        tokens
            .identify(token)
            .ok_or(ApiError::Unauthenticated("unknown token"))
    }

    /// The interceptor that puts the caller into every request of a service.
    pub fn interceptor(self: &Arc<Self>) -> Authenticate {
        Authenticate(Arc::clone(self))
    }
}

fn load(path: &std::path::Path) -> Result<(Tokens, [u8; 32]), TokenError> {
    let text = stylefarm_net::token::read_tokens_file(path)?;
    let tokens = Tokens::parse(path, &text)?;
    // The hash of what was parsed tells an unchanged file from a changed one.
    Ok((tokens, Sha256::digest(text.as_bytes()).into()))
}

fn anonymous() -> Arc<Identity> {
    Arc::new(Identity {
        name: ANONYMOUS.to_owned(),
        roles: vec![Role::Admin],
        max_priority: i32::MAX,
    })
}

/// Identifies each call (see [`Auth::identify`]) before its service sees it.
#[derive(Clone)]
pub struct Authenticate(Arc<Auth>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let who = self.0.identify(req.metadata()).map_err(Status::from)?;
        req.extensions_mut().insert(Caller(who));
        Ok(req)
    }
}

/// The identity of a call, put there by [`Authenticate`].
#[derive(Clone)]
pub struct Caller(pub Arc<Identity>);

/// The caller of `req`, when it may act as `role`.
pub fn caller<T>(req: &Request<T>, role: Role) -> Result<Arc<Identity>, ApiError> {
    let who = req
        .extensions()
        .get::<Caller>()
        .map(|c| Arc::clone(&c.0))
        .ok_or(ApiError::Unauthenticated("the call was not authenticated"))?;
    if who.may(role) {
        Ok(who)
    } else {
        Err(ApiError::Forbidden(format!(
            "{} may not call this: it needs the {role} role",
            who.name
        )))
    }
}

/// The caller of a read (GetBatch, ListBatches, WatchBatch, GetServerInfo): any
/// authenticated identity, a worker's too (the web interface shows the farm read-only to
/// worker identities). Changes still need the submitter role and ownership.
pub fn reader<T>(req: &Request<T>) -> Result<Arc<Identity>, ApiError> {
    caller(req, Role::Worker).or_else(|_| caller(req, Role::Submitter))
}

/// Allows changes to a batch only to its owner and admins.
pub fn owner_or_admin(who: &Identity, owner: &str, batch_id: &str) -> Result<(), ApiError> {
    if who.is_admin() || who.name == owner {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "batch {batch_id} belongs to {owner}; {} may not change it",
            who.name
        )))
    }
}

/// Allows a submission at `priority` when the caller's maximum admits it.
pub fn priority(who: &Identity, priority: i32) -> Result<(), ApiError> {
    if who.is_admin() || priority <= who.max_priority {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "priority {priority} is above {}'s maximum of {}",
            who.name, who.max_priority
        )))
    }
}
