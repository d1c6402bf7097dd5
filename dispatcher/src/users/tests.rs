//! The `[[user]]` tables, user proofs and the role matrix, with keys made
//! by the crate in the test.

use super::*;
use protocol::handshake::UserKey;

const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDPJcztiL0nBzwu2a40o93had6JEhR6k6+cmNlzqQQ5IAQcPYO66IXvL18d7WFY+h+7KR3LK/U9Jr2eVhcnRSNQi2EddosbTNjiSwB+yy7soWM8AgSahVPezTZ2oqVHhTGy1XTJDJGpTcQ4DzMZd5soE2tmjYbY9jvE/UpAf4J7Jw== rsa";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNkJ4kf0yOtXIZRRYKhYj2aLTzw0fJGhSpcARsL0HVy7zQqqIACYvZ2a0qt6hrMGlf+gF6fk8jY4LI7YA/iJFDo= ec";

/// The secret half of a test user's key.
fn signing(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// The OpenSSH public key line of a test key, as `ssh-keygen` writes it.
fn key_line(seed: u8) -> String {
    let keypair = ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
    let mut public = ssh_key::private::PrivateKey::from(keypair).public_key().clone();
    public.set_comment(format!("user{seed}@test"));
    public.to_openssh().unwrap()
}

fn users(text: &str) -> anyhow::Result<Users> {
    #[derive(Deserialize)]
    struct File {
        user: Vec<UserFile>,
    }
    let file: File = toml::from_str(text)?;
    Users::from_files(file.user)
}

fn table(name: &str, seed: u8, roles: &str, extra: &str) -> String {
    format!("[[user]]\nname = \"{name}\"\npublic_key = \"{}\"\nroles = [{roles}]\n{extra}\n", key_line(seed))
}

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

fn repo(text: &str) -> RepoUrl {
    RepoUrl::new(text).unwrap()
}

fn err(text: &str) -> String {
    format!("{:#}", users(text).unwrap_err())
}

#[test]
fn user_tables_are_parsed() {
    let config = users(
        &(table("alice", 1, "\"read\", \"trigger\"", "repos = [\"/srv/app.git\"]")
            + &table("bob", 2, "\"approve\"", "environments = [\"staging\"]")),
    )
    .unwrap();
    let alice = config.get(&name("alice")).unwrap();
    assert!(alice.has(UserRole::Trigger) && !alice.has(UserRole::Approve));
    assert!(alice.fingerprint.starts_with("SHA256:"), "{}", alice.fingerprint);
    assert_eq!(alice.repos, Some(vec![repo("/srv/app.git")]));
    assert_eq!(config.get(&name("bob")).unwrap().environments, Some(vec!["staging".to_string()]));
    assert!(config.enabled());
    assert!(!Users::default().enabled());
}

#[test]
fn bad_user_tables_are_clear_errors() {
    let bad_line = "[[user]]\nname = \"a\"\npublic_key = \"ssh-ed25519 not-base64!\"\nroles = [\"read\"]\n";
    assert!(
        err(bad_line).contains("[[user]] a: public_key is not an OpenSSH public key line"),
        "{}",
        err(bad_line)
    );
    for other in [RSA, ECDSA] {
        let text = format!("[[user]]\nname = \"a\"\npublic_key = \"{other}\"\nroles = [\"read\"]\n");
        let message = err(&text);
        assert!(message.contains(" key; only ssh-ed25519 keys are accepted"), "{message}");
        assert!(message.starts_with("[[user]] a: "), "{message}");
    }
    let unknown = err(&table("a", 1, "\"deploy\"", ""));
    assert!(
        unknown.contains("unknown role \"deploy\"; expected read, trigger, approve or admin"),
        "{unknown}"
    );
    assert!(err(&table("a", 1, "", "")).contains("roles is empty"));
    let twice = err(&(table("a", 1, "\"read\"", "") + &table("a", 2, "\"read\"", "")));
    assert!(twice.contains("[[user]] a: the name is given twice"), "{twice}");
    let shared = err(&(table("a", 1, "\"read\"", "") + &table("b", 1, "\"read\"", "")));
    assert!(
        shared.contains("[[user]] b: the key SHA256:") && shared.contains("is also user a's"),
        "{shared}"
    );
    assert!(err(&table("a b", 1, "\"read\"", "")).contains("[[user]] name"));
    assert!(
        err(&table("a", 1, "\"read\"", "environments = [\"a;b\"]")).contains("environments must be names")
    );
    let misspelt = err(&table("a", 1, "\"read\"", "repo = [\"/x\"]"));
    assert!(misspelt.contains("unknown field `repo`"), "{misspelt}");
}

fn prove(key: &UserKey, nonce: &[u8; 32]) -> UserProof {
    key.prove(nonce, Role::Client, &name("baton"))
}

#[test]
fn proofs_name_the_user_of_the_key() {
    let config = users(&(table("alice", 1, "\"read\"", "") + &table("bob", 2, "\"read\"", ""))).unwrap();
    let nonce = [5; 32];
    let check = |proof: &UserProof| config.identify(proof, &nonce, Role::Client, &name("baton"));
    let by_key = UserKey { user: None, key: signing(2) };
    assert_eq!(check(&prove(&by_key, &nonce)), Ok(name("bob")));
    let named = UserKey { user: Some(name("alice")), key: signing(1) };
    assert_eq!(check(&prove(&named, &nonce)), Ok(name("alice")));
    // Bob's private key, claiming to be alice.
    let wrong = UserKey { user: Some(name("alice")), key: signing(2) };
    let message = check(&prove(&wrong, &nonce)).unwrap_err();
    assert!(message.contains("is not user alice's"), "{message}");
    let stranger = UserKey { user: None, key: signing(3) };
    let message = check(&prove(&stranger, &nonce)).unwrap_err();
    assert!(message.starts_with("no user has the key SHA256:"), "{message}");
    let nobody = UserKey { user: Some(name("carol")), key: signing(3) };
    assert_eq!(check(&prove(&nobody, &nonce)), Err("no user named carol".into()));
    // Alice's public key with a signature by another key, or for another nonce.
    let mut forged = prove(&UserKey { user: None, key: signing(3) }, &nonce);
    forged.public_key = signing(1).verifying_key().to_bytes().to_vec();
    assert_eq!(check(&forged), Err("the signature for user alice does not verify".into()));
    let replayed = prove(&UserKey { user: None, key: signing(1) }, &[6; 32]);
    assert_eq!(check(&replayed), Err("the signature for user alice does not verify".into()));
}

fn principal(user: Option<&str>, via: Via) -> Principal {
    Principal { user: user.map(name), via }
}

#[test]
fn without_users_the_secret_or_loopback_steers_everything() {
    let none = Users::default();
    let app = repo("/srv/app.git");
    for via in [Via::Secret, Via::Loopback] {
        for action in [
            Action::Read,
            Action::Trigger { repo: &app },
            Action::Approve { repo: &app, environment: Some("production") },
            Action::Admin,
        ] {
            assert_eq!(authorize(&none, &principal(None, via), action), Ok(()));
        }
    }
    assert_eq!(authorize(&none, &principal(None, Via::Nothing), Action::Read), Ok(()));
    let refused = authorize(&none, &principal(None, Via::Nothing), Action::Trigger { repo: &app });
    assert_eq!(refused, Err(Refusal("not allowed: this command needs an authenticated client".into())));
}

#[test]
fn with_users_roles_decide() {
    let config = users(
        &(table("reader", 1, "\"read\"", "")
            + &table("dev", 2, "\"trigger\"", "repos = [\"/srv/app.git\"]")
            + &table("lead", 3, "\"approve\"", "environments = [\"staging\"]")
            + &table("root", 4, "\"admin\"", "")
            + &table("ops", 5, "\"admin\"", "repos = [\"/srv/app.git\"]")),
    )
    .unwrap();
    let (app, api) = (repo("/srv/app.git"), repo("/srv/api.git"));
    let trigger_app = Action::Trigger { repo: &app };
    let trigger_api = Action::Trigger { repo: &api };
    let staging = Action::Approve { repo: &app, environment: Some("staging") };
    let production = Action::Approve { repo: &app, environment: Some("production") };
    let no_environment = Action::Approve { repo: &app, environment: None };
    let allowed = |user: Option<&str>, via: Via, action: Action<'_>| {
        authorize(&config, &principal(user, via), action).is_ok()
    };
    // Rows: principal; columns: read, trigger app, trigger api, approve
    // staging, approve production, approve without environment, admin.
    let matrix: [(Option<&str>, Via, [bool; 7]); 8] = [
        (None, Via::Secret, [true, false, false, false, false, false, false]),
        (None, Via::Loopback, [true, false, false, false, false, false, false]),
        (None, Via::Nothing, [false, false, false, false, false, false, false]),
        (Some("reader"), Via::Key, [true, false, false, false, false, false, false]),
        (Some("dev"), Via::Key, [true, true, false, false, false, false, false]),
        (Some("lead"), Via::Secret, [true, false, false, true, false, false, false]),
        (Some("root"), Via::Key, [true, true, true, true, true, true, true]),
        (Some("ops"), Via::Key, [true, true, false, true, true, true, false]),
    ];
    for (user, via, expected) in matrix {
        let got = [
            allowed(user, via, Action::Read),
            allowed(user, via, trigger_app),
            allowed(user, via, trigger_api),
            allowed(user, via, staging),
            allowed(user, via, production),
            allowed(user, via, no_environment),
            allowed(user, via, Action::Admin),
        ];
        assert_eq!(got, expected, "{user:?} via {via:?}");
    }
    let refusal = authorize(&config, &principal(Some("reader"), Via::Key), trigger_app).unwrap_err();
    assert_eq!(refusal.0, "not allowed: user reader lacks the trigger role");
    let refusal = authorize(&config, &principal(Some("lead"), Via::Key), production).unwrap_err();
    assert_eq!(refusal.0, "not allowed: user lead may not approve in environment production");
    let refusal = authorize(&config, &principal(None, Via::Secret), trigger_app).unwrap_err();
    assert!(refusal.0.contains("this dispatcher has users; prove one with your key"), "{}", refusal.0);
}

#[test]
fn the_actor_is_the_user_or_the_peer() {
    assert_eq!(principal(Some("alice"), Via::Key).actor("baton"), "alice");
    assert_eq!(principal(None, Via::Secret).actor("baton"), "baton");
}
