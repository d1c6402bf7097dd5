//! TLS end to end (issue 6): a dispatcher with a certificate, a runner, an
//! observer and the client that trust its CA, and a shared secret on top; a
//! commit passes, and a plaintext client gets nowhere.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::support::{self, baton_with_env, Dispatcher, Repo};

/// Writes a CA and a certificate for 127.0.0.1 signed by it; returns the
/// paths of the CA, the certificate and its key.
fn certificates(dir: &Path) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = [dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")];
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    let [ca, cert, key] = paths.map(|path| path.display().to_string());
    (ca, cert, key)
}

#[test]
fn every_peer_speaks_tls_to_a_dispatcher_with_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tmp.path());
    let token = tmp.path().join("token");
    std::fs::write(&token, "tls and a secret").unwrap();
    let token = token.display().to_string();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");

    let dispatcher = Dispatcher::start(
        &tmp.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key, "--token-file", &token],
    );
    let secure = ["--tls-ca", ca.as_str(), "--token-file", token.as_str()];
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &secure);
    let mut observer_args = secure.to_vec();
    observer_args.extend(["--poll", "100ms"]);
    let _observer = support::observer(tmp.path(), &dispatcher.addr, &repo.path, &observer_args);

    let env = [("BATON_TLS_CA", ca.as_str()), ("BATON_TOKEN_FILE", token.as_str())];
    let task = support::wait_for("the commit to pass over TLS", || {
        let output = baton_with_env(&dispatcher.addr, &["show", &commit, "--json"], &env);
        let task: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        matches!(task["state"].as_str(), Some("passed" | "failed" | "error")).then_some(task)
    });
    assert_eq!(task["state"], "passed", "{task:#}");

    // Without the CA the client speaks plaintext to a TLS port: refused.
    let output = baton_with_env(&dispatcher.addr, &["status"], &[("BATON_TOKEN_FILE", token.as_str())]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the dispatcher"));
}
