//! `baton-dispatcher` as a library, so tests and benchmarks can start it in
//! process: [`run`] takes a bound listener and a stop signal.
//!
//! Map: `server` accepts connections and runs the handshake; `handler` has
//! one module per peer role; `scheduler` owns the live state and the writing
//! store connection; `store` owns every SQL string; `files` owns the data
//! directory's layout; `readers` serves client queries.

pub mod cli;
pub mod config;
pub mod files;
pub mod follow;
pub mod handler;
pub mod logs;
pub mod notify;
pub mod readers;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod time;
pub mod users;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use protocol::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// How long connection tasks get to finish after the stop signal.
const GRACE: Duration = Duration::from_secs(5);

/// Runs the dispatcher on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// When the data directory or database cannot be opened, the token file
/// cannot be read, or the store fails while running (disk full, I/O errors):
/// the daemon then stops, and a restart recovers from what was committed.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_web(config, listener, None, shutdown).await
}

/// Runs the dispatcher, and the web report service on `web` when given.
///
/// # Errors
/// As [`run`].
pub async fn run_with_web(
    config: Config,
    listener: TcpListener,
    web: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let files = files::DataDir::create(&config.data_dir)?;
    let store = store::Store::open(&files.database(), config.sync)?;
    let secret = match &config.token_file {
        Some(path) => {
            let (secret, loose) =
                Secret::from_file(path).with_context(|| format!("reading token file {}", path.display()))?;
            if loose {
                tracing::warn!(path = %path.display(), "token file is readable by group or others");
            }
            tracing::info!("peers must prove the shared secret");
            Some(secret)
        }
        None => {
            tracing::warn!("no token file: accepting only loopback peers");
            None
        }
    };
    if config.users.enabled() {
        tracing::info!(
            n_users = config.users.count(),
            "users configured: steering needs a proven user with the role; the shared secret alone only reads"
        );
    }
    let outbox = Arc::new(tokio::sync::Notify::new());
    let tls = match &config.tls {
        Some((cert, key)) => {
            let tls =
                protocol::tls::ServerTls::from_pem_files(cert, key).context("loading the TLS certificate")?;
            tracing::info!(cert = %cert.display(), "peers must connect over TLS");
            Some(tls)
        }
        None => None,
    };
    // A full disk must not keep the dispatcher from serving reads: the
    // files are written again at the next start with room.
    if let Err(err) = files::catch_up(&store, &files) {
        tracing::error!(error = %format!("{err:#}"), "cannot write the files a crash left unwritten; starting anyway");
    }
    let readers = readers::Readers::new(files.database());
    // The logs thread is not joined at exit: a compression cut short is
    // finished by the next start, like one a crash cut short.
    let (logs, _logs_thread) = logs::start(files.clone(), Arc::clone(&readers))?;
    let (file_writer, file_thread) = files::start_writer(files.clone(), logs.clone())?;
    let (scheduler, thread) = scheduler::start(
        store,
        files.clone(),
        config.settings.clone(),
        Arc::clone(&outbox),
        file_writer,
        shutdown.clone(),
    )?;
    let shared = Arc::new(
        server::Shared::new(scheduler.clone(), readers, files, secret, tls, shutdown.clone())
            .with_heartbeat(config.settings.heartbeat_interval, config.settings.heartbeat_misses)
            .with_users(Arc::clone(&config.users)),
    );
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "dispatcher started");

    let tracker = TaskTracker::new();
    let ticker = {
        let scheduler = scheduler.clone();
        let shutdown = shutdown.clone();
        let period = config.settings.tick_period();
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = interval.tick() => {
                        if scheduler.send(scheduler::Event::Tick).await.is_err() { break }
                    }
                }
            }
        })
    };
    // Links in commit statuses: the public URL given, or the web's own.
    let public_url = match (&config.public_url, &web) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(web)) => Some(format!("http://{}", web.local_addr()?)),
        (None, None) => None,
    };
    tracker.spawn(retention::run(
        config.retention.clone(),
        Arc::clone(&shared.readers),
        scheduler.clone(),
        shared.files.clone(),
        logs,
        shutdown.clone(),
    ));
    tracker.spawn(notify::run(
        Arc::clone(&config.settings.notifiers),
        public_url,
        Arc::clone(&shared.readers),
        scheduler.clone(),
        outbox,
        shutdown.clone(),
    ));
    let web_thread = match web {
        Some(web) => {
            let secret = match &config.token_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("reading token file {}", path.display()))?
                        .trim_ascii()
                        .to_vec(),
                ),
                None => None,
            };
            tracing::info!(http = %web.local_addr()?, "web report service started");
            let parts = web::Parts {
                scheduler: scheduler.clone(),
                readers: Arc::clone(&shared.readers),
                files: shared.files.clone(),
                secret,
                users: Arc::clone(&config.users),
                shutdown: shutdown.clone(),
            };
            Some(web::start(web, parts)?)
        }
        None => None,
    };
    server::serve(listener, Arc::clone(&shared), &tracker).await;
    tracing::info!("stopping: no new connections");
    tracker.close();
    if tokio::time::timeout(GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not finish in time");
    }
    if let Some(thread) = web_thread {
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(GRACE, joined).await.is_err() {
            tracing::warn!("the web service did not stop in time");
        }
    }
    drop(ticker);
    // The scheduler thread ends once the last handle is gone; it has
    // committed every batch it acknowledged.
    drop(shared);
    drop(scheduler);
    let joined = tokio::task::spawn_blocking(move || thread.join());
    // The scheduler logged the store's error when it stopped.
    let mut store_failed = false;
    match tokio::time::timeout(GRACE, joined).await {
        Ok(Ok(Ok(Ok(())))) => {}
        Ok(Ok(Ok(Err(_)))) => store_failed = true,
        Ok(Ok(Err(_))) => anyhow::bail!("the scheduler thread panicked"),
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => tracing::warn!("scheduler did not stop in time"),
    }
    // The writer ends once the scheduler (its only sender) is gone.
    let written = tokio::task::spawn_blocking(move || file_thread.join());
    if tokio::time::timeout(GRACE, written).await.is_err() {
        tracing::warn!("result files were still being written at exit; the next start writes them");
    }
    if store_failed {
        anyhow::bail!("stopped because the store failed (see the error above)");
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}
