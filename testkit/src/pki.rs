//! Certificates and tokens for a coordinator under test: a CA of its own, a server
//! certificate for loopback, a client certificate, and a tokens file with one identity
//! per role. Made once per folder: a coordinator restarted on the same folder (after a
//! kill -9, say) serves the same certificate and knows the same tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use stylefarm_net::{Identity, Role};
use time::{Duration, OffsetDateTime};

/// A CA and the certificates it issued, as PEM files in one folder.
pub struct Pki {
    /// The CA certificate clients verify the coordinator with.
    pub ca: PathBuf,
    /// The coordinator's certificate (127.0.0.1 and localhost).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// A client certificate for mutual TLS.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    dir: PathBuf,
    /// The CA's own parameters and key, when made in this process (to issue more).
    issuer: Option<(CertificateParams, KeyPair)>,
}

#[allow(clippy::expect_used)]
impl Pki {
    /// The CA and certificates in `dir`, made there first when missing.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki folder");
        let mut pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir: dir.to_owned(),
            issuer: None,
        };
        if pki.client_key.exists() {
            return pki;
        }
        // Named after the folder: two test CAs must not share a name, or a client would
        // take one for the other's issuer and fail on the signature instead.
        let name = dir
            .file_name()
            .map_or("", |n| n.to_str().unwrap_or_default());
        let (params, key) = ca(&format!("stylefarm test CA {name}"));
        write(&pki.ca, &params.self_signed(&key).expect("CA").pem());
        pki.issuer = Some((params, key));
        pki.issue("server", Purpose::Server, valid_now());
        pki.issue("client", Purpose::Client, valid_now());
        pki
    }

    /// The same CA with another server certificate and key (files the test made).
    pub fn with_server(&self, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            ca: self.ca.clone(),
            cert,
            key,
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            dir: self.dir.clone(),
            issuer: None,
        }
    }

    /// Issues a certificate and key under this CA into `NAME.pem` and `NAME.key`, valid
    /// over `validity` (see [`valid_now`] and [`expired`]).
    pub fn issue(
        &self,
        name: &str,
        purpose: Purpose,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> (PathBuf, PathBuf) {
        let (ca_params, ca_key) = self
            .issuer
            .as_ref()
            .expect("this Pki made its CA in this process");
        let mut params = match purpose {
            Purpose::Server => CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]),
            Purpose::Client => CertificateParams::new(Vec::<String>::new()),
        }
        .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![match purpose {
            Purpose::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Purpose::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        (params.not_before, params.not_after) = validity;
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &Issuer::from_params(ca_params, ca_key))
            .expect("sign");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

/// A CA nobody else knows, in `dir/NAME.pem` (a client that trusts it must refuse the
/// coordinator).
#[allow(clippy::expect_used)]
pub fn stranger_ca(dir: &Path, name: &str) -> PathBuf {
    let (params, key) = ca(name);
    let path = dir.join(format!("{name}.pem"));
    write(&path, &params.self_signed(&key).expect("CA").pem());
    path
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// A coordinator's.
    Server,
    /// A client's (mutual TLS).
    Client,
}

/// From an hour ago to thirty days on.
pub fn valid_now() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::hours(1), now + Duration::days(30))
}

/// Ended yesterday.
pub fn expired() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(30), now - Duration::days(1))
}

#[allow(clippy::expect_used)]
fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = valid_now();
    (params, KeyPair::generate().expect("CA key"))
}

#[allow(clippy::expect_used)]
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The identities of a test farm: `admin`; submitters `alice` (max priority 10) and
/// `bob`; workers `worker` and `worker2`.
pub const IDENTITIES: [(&str, Role, i32); 5] = [
    ("admin", Role::Admin, 0),
    ("alice", Role::Submitter, 10),
    ("bob", Role::Submitter, 0),
    ("worker", Role::Worker, 0),
    ("worker2", Role::Worker, 0),
];

/// A tokens file and each identity's token file, in one folder.
pub struct Tokens {
    /// The coordinator's tokens file.
    pub file: PathBuf,
    tokens: BTreeMap<String, String>,
    dir: PathBuf,
}

impl Tokens {
    /// The token of `name`.
    #[allow(clippy::expect_used)]
    pub fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .map(String::as_str)
            .expect("a known identity")
    }

    /// The file holding `name`'s token (a client's `--token-file`).
    pub fn token_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.token"))
    }
}

/// The tokens of [`IDENTITIES`] in `dir`, made there first when missing.
#[allow(clippy::expect_used)]
pub fn tokens(dir: &Path) -> Tokens {
    std::fs::create_dir_all(dir).expect("tokens folder");
    let file = dir.join("tokens");
    let made = file.exists();
    let mut tokens = BTreeMap::new();
    for (name, role, max_priority) in IDENTITIES {
        let path = dir.join(format!("{name}.token"));
        let token = if made {
            std::fs::read_to_string(&path)
                .expect("token file")
                .trim()
                .to_owned()
        } else {
            let identity = Identity {
                name: name.into(),
                roles: vec![role],
                max_priority,
            };
            let token = stylefarm_net::token::add(&file, &identity).expect("token add");
            write(&path, &format!("{token}\n"));
            token
        };
        tokens.insert(name.to_owned(), token);
    }
    Tokens {
        file,
        tokens,
        dir: dir.to_owned(),
    }
}
