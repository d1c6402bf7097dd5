//! What some tests need from the system and only root can give: a small
//! tmpfs (a disk that fills up) and a network namespace (an address that is
//! not loopback, on any machine). CI runs as root, so these tests run there
//! and fail loudly when the set-up fails; a developer without root sets
//! [`OPT_OUT_VAR`] to let them pass with a note instead.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Set to `1` to let tests that need root pass (with a note on stderr) when
/// their set-up is impossible, instead of failing.
pub const OPT_OUT_VAR: &str = "BATON_TEST_WITHOUT_ROOT";

/// `Some(value)` when the set-up worked; `None` when it failed and the
/// developer opted out (after saying so on stderr).
///
/// # Errors
/// When the set-up failed and nobody opted out.
pub fn unless_opted_out<T>(setup: anyhow::Result<T>, what: &str) -> anyhow::Result<Option<T>> {
    match setup {
        Ok(value) => Ok(Some(value)),
        Err(err) if std::env::var(OPT_OUT_VAR).is_ok_and(|value| value == "1") => {
            eprintln!("NOT RUN ({OPT_OUT_VAR}=1): {what}: {err:#}");
            Ok(None)
        }
        Err(err) => Err(err.context(format!(
            "{what} needs root (CI runs as root); set {OPT_OUT_VAR}=1 to let it pass without"
        ))),
    }
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`) on `path`, creating the directory.
    ///
    /// # Errors
    /// When mount(8) fails (not root).
    pub fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            output.status.success(),
            "mounting a {size} tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A network namespace of its own, held open by a sleeping child process
/// and gone with it (when dropped): nothing named, nothing to clean up.
/// It has loopback up, plus whatever [`Netns::add_address`] adds.
#[derive(Debug)]
pub struct Netns {
    holder: Child,
    /// `/proc/PID/ns/net` of the holder.
    path: PathBuf,
}

impl Netns {
    /// Makes the namespace and brings its loopback up.
    ///
    /// # Errors
    /// When unshare(2) is refused (not root) or `ip` (iproute2) fails.
    pub fn new() -> anyhow::Result<Netns> {
        let mut command = Command::new("sleep");
        command.arg("infinity").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: runs in the forked child before exec and only makes the
        // async-signal-safe unshare(2) call.
        unsafe {
            command.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = command.spawn().context("making a network namespace (unshare(CLONE_NEWNET))")?;
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let netns = Netns { holder, path };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `/proc/PID/ns/net`, for [`crate::Launch::netns`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives loopback one more address (`10.200.0.1`): not a loopback
    /// address, so a peer connecting to it is seen as coming from outside.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_address(&self, ip: &str) -> anyhow::Result<()> {
        self.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
    }

    /// Makes `command` run inside the namespace.
    ///
    /// # Errors
    /// When the namespace cannot be opened.
    pub fn enter(&self, command: &mut Command) -> anyhow::Result<()> {
        enter(command, &self.path)
    }

    /// Runs `f` on a thread inside the namespace: sockets it makes belong
    /// there (setns(2) moves only the calling thread) and may be used from
    /// any thread afterwards.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let ns = File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let thread = std::thread::spawn(move || {
            // SAFETY: setns(2) with a descriptor we own; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        let entered = thread.join().map_err(|_| anyhow::anyhow!("a thread inside the namespace panicked"))?;
        entered.context("entering the network namespace")
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new("ip");
        command.args(args);
        self.enter(&mut command)?;
        let output = command.output().context("running ip (install iproute2)")?;
        anyhow::ensure!(
            output.status.success(),
            "ip {} in the namespace: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Makes `command` enter the network namespace at `path` before exec.
pub(crate) fn enter(command: &mut Command, path: &Path) -> anyhow::Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: runs in the forked child before exec and only makes the
    // async-signal-safe setns(2) call on a descriptor the closure owns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
