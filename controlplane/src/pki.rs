//! First-start security material: a cluster CA, a serving certificate signed by it, the admin
//! token behind `admin.kubeconfig`, and the node join token.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}; check that the data directory is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the CA key in {0} is unreadable; remove the pki directory to start a fresh cluster")]
    BadKey(PathBuf),
}

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
    pub node_token: String,
    /// The controlplane's client certificate toward node agents (their kubelet endpoints
    /// trust the cluster CA for clients).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

fn token() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA's parameters; rebuilt identically on every start so the stored key can sign.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "skiff-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

impl Pki {
    /// Loads the CA and tokens from `dir/pki`, creating them on first start, and issues a fresh
    /// serving certificate for `names` (DNS names or IP addresses).
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        let pki = dir.join("pki");
        fs::create_dir_all(&pki).map_err(|source| PkiError::Io {
            path: pki.clone(),
            source,
        })?;
        let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
        let (ca_pem, ca_key_pair) = match (read(&ca_crt)?, read(&ca_key)?) {
            (Some(c), Some(k)) => (
                c,
                KeyPair::from_pem(&k).map_err(|_| PkiError::BadKey(ca_key.clone()))?,
            ),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                write_private(&ca_key, &key.serialize_pem())?;
                fs::write(&ca_crt, cert.pem()).map_err(|source| PkiError::Io {
                    path: ca_crt.clone(),
                    source,
                })?;
                (cert.pem(), key)
            }
        };
        let issuer = Issuer::new(ca_params()?, ca_key_pair);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "skiff-controlplane");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let mut sans = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        sans.extend(names.iter().cloned());
        sans.sort();
        sans.dedup();
        for n in sans {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.try_into()?),
            });
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "skiff-controlplane-kubelet-client");
        client.not_before = rcgen::date_time_ymd(2024, 1, 1);
        client.not_after = rcgen::date_time_ymd(2124, 1, 1);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &issuer)?;
        let admin_path = pki.join("admin-token");
        let admin_token = match read(&admin_path)? {
            Some(t) => t.trim().to_owned(),
            None => {
                let t = token();
                write_private(&admin_path, &t)?;
                t
            }
        };
        let node_path = dir.join("node-token");
        let node_token = match read(&node_path)? {
            Some(t) => t.trim().to_owned(),
            None => {
                let t = token();
                write_private(&node_path, &t)?;
                t
            }
        };
        Ok(Self {
            ca_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            admin_token,
            node_token,
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        })
    }

    /// A kubeconfig for the admin user against `server` (https://host:port).
    pub fn kubeconfig(&self, server: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\n",
            self.admin_token
        )
    }

    pub fn write_kubeconfig(&self, dir: &Path, server: &str) -> Result<PathBuf, PkiError> {
        let path = dir.join("admin.kubeconfig");
        write_private(&path, &self.kubeconfig(server))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_ca_and_tokens_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &["10.0.0.1".into()]).unwrap();
        let b = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(a.node_token, b.node_token);
        assert_ne!(a.admin_token, a.node_token);
        assert!(
            a.kubeconfig("https://127.0.0.1:6443")
                .contains("certificate-authority-data")
        );
    }
}
