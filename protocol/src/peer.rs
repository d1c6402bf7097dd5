//! What every daemon needs around a connection but that is not the wire
//! format itself: dialling the dispatcher, reconnect back-off, logging set-up
//! and the stop signal. Kept here so the three daemons share one copy without
//! depending on each other.

use std::path::Path;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::handshake::{self, Role, Secret, UserKey, Welcome};
use crate::tls::ClientTls;
use crate::types::Name;
use crate::{Connection, Error, Transport};

/// What a peer presents to the dispatcher: the shared secret, for TLS the
/// CA to check the dispatcher's certificate against, and for a client the
/// key of the person using it.
#[derive(Clone, Default)]
pub struct Credentials {
    pub secret: Option<Secret>,
    pub tls: Option<ClientTls>,
    pub user: Option<UserKey>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secret", &self.secret)
            .field("tls", &self.tls.as_ref().map(|_| "<configured>"))
            .field("user", &self.user)
            .finish()
    }
}

impl Credentials {
    /// Loads `--token-file` and `--tls-ca` (with an optional
    /// `--tls-server-name`), warning when the token file is readable by
    /// others.
    ///
    /// # Errors
    /// Unreadable or invalid files, with the path in the message.
    pub fn load(
        token_file: Option<&Path>,
        tls_ca: Option<&Path>,
        tls_server_name: Option<&str>,
    ) -> std::io::Result<Credentials> {
        let secret = match token_file {
            Some(path) => {
                let (secret, loose) = Secret::from_file(path).map_err(|err| {
                    std::io::Error::new(err.kind(), format!("reading token file {}: {err}", path.display()))
                })?;
                if loose {
                    tracing::warn!(path = %path.display(), "token file is readable by group or others");
                }
                Some(secret)
            }
            None => None,
        };
        let tls = tls_ca.map(|ca| ClientTls::from_ca_file(ca, tls_server_name)).transpose()?;
        Ok(Credentials { secret, tls, user: None })
    }
}

/// Dials `address` (plaintext) and completes the handshake as `role`.
///
/// # Errors
/// Connection refused, handshake failures and rejects.
pub async fn dial<In, Out>(
    address: &str,
    role: Role,
    name: &Name,
    secret: Option<&Secret>,
    max_frame: usize,
) -> Result<(Connection<In, Out>, Welcome), Error>
where
    In: serde::de::DeserializeOwned,
    Out: serde::Serialize,
{
    let credentials = Credentials { secret: secret.cloned(), tls: None, user: None };
    dial_with(address, role, name, &credentials, max_frame).await
}

/// Dials `address`, runs TLS when the credentials have a CA, and completes
/// the handshake as `role`.
///
/// # Errors
/// Connection refused, TLS failures, handshake failures and rejects.
pub async fn dial_with<In, Out>(
    address: &str,
    role: Role,
    name: &Name,
    credentials: &Credentials,
    max_frame: usize,
) -> Result<(Connection<In, Out>, Welcome), Error>
where
    In: serde::de::DeserializeOwned,
    Out: serde::Serialize,
{
    let connect = async {
        let stream = TcpStream::connect(address).await?;
        match &credentials.tls {
            Some(tls) => tls.connect(stream, address).await,
            None => Transport::plain(stream),
        }
    };
    let transport =
        tokio::time::timeout(crate::HANDSHAKE_TIMEOUT, connect).await.map_err(|_| Error::Timeout)??;
    handshake::connect_as(
        transport,
        role,
        name,
        credentials.secret.as_ref(),
        credentials.user.as_ref(),
        max_frame,
    )
    .await
}

/// Splits an address into host and port (`ci.example.com:8888`,
/// `[::1]:8888`), or `None` when either is missing or the port is not a
/// number: a bare `localhost` or `nonsense` can never be dialled, so daemons
/// refuse it at start-up instead of retrying it forever.
pub fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// The first wait of the default back-off.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
/// The cap of the default back-off.
const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// The longest wait between two tries of the default back-off: its cap
/// with the most jitter. A restarted dispatcher waits at least this long for
/// the runners that held tasks before it gives their tasks to others: a
/// runner that was away as long as the dispatcher may be waiting that long
/// before its next try.
pub const LONGEST_RECONNECT_WAIT: Duration =
    Duration::from_millis(RECONNECT_CAP.as_millis() as u64 * (100 + JITTER_PERCENT) / 100);
/// The jitter of every wait, ± this share of it.
const JITTER_PERCENT: u64 = 25;

/// Capped exponential back-off with jitter, for reconnecting to a dispatcher
/// that is gone.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(RECONNECT_FIRST, RECONNECT_CAP)
    }
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { next: initial, initial, max }
    }

    /// The delay before the next try: the current step with up to ±25 %
    /// jitter, so that many peers of a restarted dispatcher do not return in
    /// one burst.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let spread = JITTER_PERCENT as f64 / 100.0;
        let jitter = rand::rng().random_range(1.0 - spread..1.0 + spread);
        // Whole milliseconds: nothing waits more precisely, and a log line
        // then reads `retry_in=59ms`, not `retry_in=58.748952ms`.
        Duration::from_millis(base.mul_f64(jitter).as_millis().max(1) as u64)
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Installs the tracing subscriber: `RUST_LOG` (default `info`) to stderr,
/// as text or as JSON lines.
///
/// Losing the log must never stop a daemon (issue 13): `baton-runner 2>&1 |
/// head -3` used to panic in the logging of every task that wrote a line
/// after `head` exited, which dropped the runner's connection and the task
/// waiting for SIGTERM. So a line that cannot be written is dropped: the
/// writer swallows write errors (EPIPE of a closed pipe, EAGAIN of a full
/// one), the subscriber's own error report (an `eprintln!`, which panics on
/// a closed stderr) is off, and a stderr that is a pipe or a socket is made
/// non-blocking, so a reader that stops reading (a paused pager, journald
/// restarting) costs log lines, not progress. Rust already ignores SIGPIPE.
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    make_pipe_nonblocking(libc::STDERR_FILENO);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints `program: message` on stderr for an error that stops a daemon
/// before it started; a closed stderr is ignored rather than a panic.
pub fn print_fatal(program: &str, message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{program}: {message}");
}

/// Standard error for the log, dropping what cannot be written.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            // `write_all` retries an interrupted write.
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => Err(err),
            Err(_) => Ok(buf.len()),
            Ok(written) => Ok(written),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Sets `O_NONBLOCK` on `fd` when it is a pipe or a socket (never on a
/// terminal or a file, where a write does not wait on a reader).
fn make_pipe_nonblocking(fd: libc::c_int) {
    // SAFETY: fstat and fcntl on a descriptor number, with a stat buffer we
    // own; an invalid descriptor only makes them fail, which is ignored.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 {
            return;
        }
        let kind = stat.st_mode & libc::S_IFMT;
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return;
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Returns a token cancelled on the first SIGINT or SIGTERM.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn stop_token() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, stopping"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
        }
        cancel.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(host_port("ci.example.com:8888"), Some(("ci.example.com", 8888)));
        assert_eq!(host_port("[::1]:0"), Some(("[::1]", 0)));
        for bad in ["localhost", "nonsense", ":8888", "host:", "host:port", "host:70000"] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (delay, bound) in delays.iter().zip(bounds) {
            let bound = Duration::from_millis(bound);
            assert!(*delay >= bound.mul_f64(0.75) && *delay <= bound.mul_f64(1.25), "{delays:?}");
        }
        assert!(delays.iter().all(|delay| delay.subsec_nanos() % 1_000_000 == 0), "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn the_default_back_off_never_waits_longer_than_its_published_longest_wait() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|delay| *delay <= LONGEST_RECONNECT_WAIT), "{delays:?}");
        assert!(delays.iter().any(|delay| *delay > RECONNECT_CAP), "the jitter reaches past the cap");
    }
}
