//! Optional TLS between peers (rustls, ring): the dispatcher presents a
//! certificate (`--tls-cert`, `--tls-key`), peers verify it against a CA
//! (`--tls-ca`). Plaintext stays the default, for loopback.
//!
//! TLS protects the link; who may connect is still decided by the shared
//! secret of the handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::connection::Transport;

/// The dispatcher's side: a certificate chain and its key.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A peer's side: the CA that signed the dispatcher's certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn read_certs(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| invalid(format!("reading certificates from {}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

impl ServerTls {
    /// Loads a PEM certificate chain and a PEM private key.
    ///
    /// # Errors
    /// Unreadable files, no certificate, a key that does not match.
    pub fn from_pem_files(cert: &Path, key: &Path) -> std::io::Result<ServerTls> {
        let certs = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|err| invalid(format!("reading private key from {}: {err}", key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(err.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|err| invalid(format!("certificate and key: {err}")))?;
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    /// Runs the TLS handshake on an accepted connection.
    ///
    /// # Errors
    /// TLS handshake failures (a plaintext peer, a bad client).
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<Transport> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        let tls = self.acceptor.accept(stream).await?;
        Ok(Transport::from_stream(tls, peer))
    }
}

impl ClientTls {
    /// Trusts the CA certificates in a PEM file. `server_name` overrides the
    /// name checked against the certificate (default: the host of the
    /// address dialled).
    ///
    /// # Errors
    /// Unreadable or invalid CA file.
    pub fn from_ca_file(ca: &Path, server_name: Option<&str>) -> std::io::Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|err| invalid(format!("CA certificate: {err}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: server_name.map(str::to_string),
        })
    }

    /// Runs the TLS handshake on a connected stream to `address`
    /// (`host:port`).
    ///
    /// # Errors
    /// An invalid server name, or a certificate the CA did not sign.
    pub async fn connect(&self, stream: TcpStream, address: &str) -> std::io::Result<Transport> {
        let peer: SocketAddr = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(address).to_string(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|_| invalid(format!("{host:?} is not a valid TLS server name")))?;
        let tls = self.connector.connect(name, stream).await?;
        Ok(Transport::from_stream(tls, peer))
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("ci.example.com:8888"), "ci.example.com");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8888"), "::1");
    }
}

#[cfg(test)]
mod handshake_tests {
    use std::path::PathBuf;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::net::TcpListener;

    use super::*;
    use crate::handshake::{self, Role};
    use crate::message::{Accepted, DispatcherToObserver, ObserverToDispatcher};
    use crate::types::{Name, TaskId};
    use crate::Connection;

    /// Writes a CA, and a server certificate for localhost and 127.0.0.1
    /// signed by it; returns (ca, cert, key) paths.
    fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, leaf.pem()).unwrap();
        std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
        paths
    }

    #[tokio::test]
    async fn messages_cross_a_tls_link_and_a_wrong_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let (other_ca, _, _) = certificates(&other);
        let server_tls = ServerTls::from_pem_files(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // The first peer trusts another CA and gives up; the second gets through.
            let (stream, _) = listener.accept().await.unwrap();
            assert!(server_tls.accept(stream).await.is_err());
            let (stream, _) = listener.accept().await.unwrap();
            let transport = server_tls.accept(stream).await.unwrap();
            let (mut conn, admitted): (Connection<ObserverToDispatcher, DispatcherToObserver>, _) =
                handshake::accept(transport, None, None, 1024).await.unwrap();
            assert_eq!(admitted.role, Role::Observer);
            let task_id = TaskId::new(3).unwrap();
            conn.send(&DispatcherToObserver::Accepted(Accepted { task_id, duplicate: false })).await.unwrap();
        });
        let name = Name::new("o").unwrap();
        let wrong = ClientTls::from_ca_file(&other_ca, None).unwrap();
        let stream = TcpStream::connect(&address).await.unwrap();
        assert!(wrong.connect(stream, &address).await.is_err());
        let right = ClientTls::from_ca_file(&ca, None).unwrap();
        let stream = TcpStream::connect(&address).await.unwrap();
        let transport = right.connect(stream, &address).await.unwrap();
        let (mut conn, _): (Connection<DispatcherToObserver, ObserverToDispatcher>, _) =
            handshake::connect(transport, Role::Observer, &name, None, 1024).await.unwrap();
        let answer = conn.recv().await.unwrap().unwrap();
        assert!(matches!(answer, DispatcherToObserver::Accepted(Accepted { duplicate: false, .. })));
        server.await.unwrap();
    }
}
