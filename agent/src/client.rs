//! The agent's API client: the controlplane URL, its CA and the node join token.

use std::path::{Path, PathBuf};

use kube::config::AuthInfo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is empty; copy the controlplane's DATA_DIR/node-token there")]
    EmptyToken(PathBuf),
    #[error("--server {0} is not a valid URL: {1}")]
    Url(String, String),
    #[error("the CA file {0} holds no PEM certificate")]
    NoCert(PathBuf),
    #[error("cannot build the API client: {0}")]
    Build(#[from] kube::Error),
}

fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The DER certificates of a PEM file.
fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// A kube client authenticated with the node token, trusting the cluster CA.
pub fn build(server: &str, token_file: &Path, ca_file: &Path) -> Result<kube::Client, ClientError> {
    let token = read(token_file)?.trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::EmptyToken(token_file.to_owned()));
    }
    let certs = pem_certs(&read(ca_file)?);
    if certs.is_empty() {
        return Err(ClientError::NoCert(ca_file.to_owned()));
    }
    let url = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url(server.to_owned(), e.to_string()))?;
    let mut cfg = kube::Config::new(url);
    cfg.root_cert = Some(certs);
    cfg.auth_info = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Ok(kube::Client::try_from(cfg)?)
}
