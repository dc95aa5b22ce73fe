//! A lazy restore's loader in the CLI, and the socket that ends a
//! working-set recording.
//!
//! - Foreground `sprout restore`: the loader thread lives in this process,
//!   which waits for the container anyway.
//! - `sprout restore -d`: returns once the container runs; the loader goes
//!   on in a child forked for it, which exits when everything is loaded,
//!   when the container is gone, or when loading fails (then it has killed
//!   the container). The fork happens with this process down to one thread
//!   (the tracer's dropped, the loader's suspended), so the child may do
//!   anything. After a working set the loader's background pass waits a
//!   few milliseconds (`BACKGROUND_HEAD_START`), so the suspend finds it
//!   idle: the child starts it.
//! - `--record-working-set`: the loader records until `sprout image
//!   profile ID` connects to `<root>/recording/<ID>.sock` (or the
//!   container exits), then saves the working set into the image
//!   (`working-set.json` and `working-set.img`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use sprout::snapshot::restore::{LoadReport, Loader, LoaderRemote, SuspendedLoader};

use crate::cli::GlobalOpts;

/// Where the recording socket of container `id` lives.
fn socket_path(g: &GlobalOpts, id: &str) -> PathBuf {
    g.root.join("recording").join(format!("{id}.sock"))
}

/// The listening end of a recording: answers `sprout image profile`.
pub struct Recorder {
    listener: UnixListener,
    path: PathBuf,
    image_dir: PathBuf,
    /// Whether dropping it removes the socket (not in the parent of the
    /// child that took it over).
    owned: bool,
}

impl Recorder {
    /// Binds the recording socket of container `id`, whose working set
    /// goes to `image_dir`.
    pub fn bind(g: &GlobalOpts, id: &str, image_dir: &Path) -> Result<Recorder> {
        let path = socket_path(g, id);
        let dir = path.parent().expect("a socket path has a parent");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
        if UnixStream::connect(&path).is_ok() {
            bail!("container {id} is already recording a working set");
        }
        // A socket left by a recorder that died.
        let _ = std::fs::remove_file(&path);
        // Another recording that just ended may remove the directory.
        let listener = UnixListener::bind(&path)
            .or_else(|_| {
                std::fs::create_dir_all(dir)?;
                UnixListener::bind(&path)
            })
            .with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let image_dir = std::fs::canonicalize(image_dir)
            .with_context(|| format!("image directory {}", image_dir.display()))?;
        Ok(Recorder {
            listener,
            path,
            image_dir,
            owned: true,
        })
    }

    /// Answers one `finish` request: ends the recording, saves the working
    /// set, replies with what was saved. Whether the recording is over.
    fn answer(&self, remote: &LoaderRemote, stream: UnixStream) -> bool {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() || line.trim() != "finish" {
            let _ = (&stream).write_all(b"error: unknown request\n");
            return false;
        }
        // Whatever the answer, the recording has ended: the loader stopped
        // recording, or was not recording any more.
        let reply = match remote.finish_recording() {
            Ok(ws) => match ws.save(&self.image_dir) {
                Ok(()) => format!(
                    "ok {} pages in {} ranges saved to {} (their pages in {})\n",
                    ws.page_count(),
                    ws.ranges().len(),
                    self.image_dir.join("working-set.json").display(),
                    self.image_dir.join("working-set.img").display()
                ),
                Err(e) => format!("error: saving the working set: {e}\n"),
            },
            Err(e) => format!("error: {e}\n"),
        };
        let _ = (&stream).write_all(reply.as_bytes());
        true
    }

    /// Serves requests until the recording is over (a `finish` answered,
    /// loading ended) or `stop` says so; then the socket goes, so a late
    /// `sprout image profile` hears that nothing records.
    fn serve(&self, remote: &LoaderRemote, stop: &AtomicBool) {
        self.serve_until_over(remote, stop);
        let _ = std::fs::remove_file(&self.path);
    }

    fn serve_until_over(&self, remote: &LoaderRemote, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) && !remote.is_finished() {
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            if let Ok((stream, _)) = self.listener.accept()
                && self.answer(remote, stream)
            {
                return;
            }
        }
    }

    /// Serves requests on a thread of its own until [`Serving::finish`].
    pub fn serve_in_thread(self, remote: LoaderRemote) -> Serving {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            self.serve(&remote, &s);
            self
        });
        Serving { stop, thread }
    }

    /// A recording that ended with the process: saves what it recorded.
    fn save_final(&self, report: Option<&LoadReport>) {
        if let Some(ws) = report.and_then(|r| r.working_set.as_ref())
            && let Err(e) = ws.save(&self.image_dir)
        {
            tracing::error!("saving the recorded working set: {e}");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
            if let Some(dir) = self.path.parent() {
                // Only if no other recording uses it.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// A [`Recorder`] serving on its own thread.
pub struct Serving {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Recorder>,
}

impl Serving {
    /// Stops serving; saves a working set whose recording ended with the
    /// process (`report`), and removes the socket.
    pub fn finish(self, report: Option<&LoadReport>) {
        self.stop.store(true, Ordering::Release);
        if let Ok(r) = self.thread.join() {
            r.save_final(report);
        }
    }
}

/// `sprout image profile ID`: asks the recorder of container `id` to
/// finish; its answer.
pub fn finish_recording(g: &GlobalOpts, id: &str) -> Result<String> {
    let path = socket_path(g, id);
    let stream = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "container {id} is not recording a working set (no {}: {e})",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    (&stream).write_all(b"finish\n")?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    match reply.trim().strip_prefix("ok ") {
        Some(what) => Ok(format!("working set of {id}: {what}")),
        None => bail!(
            "{}",
            reply
                .trim()
                .strip_prefix("error: ")
                .unwrap_or("the recorder closed the connection")
        ),
    }
}

/// Goes on loading in a child process (see the module docs); its pid, or
/// `None` if loading had already ended. The caller must be down to one
/// thread besides the loader's, holding no lock another thread could hold;
/// `log` is the log file (`--log`) the child keeps writing to.
pub fn keep_loading_in_child(
    loader: Loader,
    recorder: Option<Recorder>,
    log: Option<&Path>,
) -> Result<Option<u32>> {
    let log = log.and_then(|p| std::fs::canonicalize(p).ok());
    let Some(suspended) = loader.suspend()? else {
        return Ok(None);
    };
    let mut keep = suspended.fds();
    keep.extend(recorder.as_ref().map(|r| r.listener.as_raw_fd()));
    // SAFETY: the loader's thread has been joined and the tracer's has
    // ended, so this is the process's only thread doing work (a runtime
    // the restore used is gone with its threads); the child takes no lock
    // but its own and malloc's, which glibc's fork leaves usable.
    match unsafe { libc::fork() } {
        -1 => bail!(
            "forking the memory loader: {}",
            std::io::Error::last_os_error()
        ),
        0 => {
            let code = child(suspended, recorder, &keep, log.as_deref());
            // SAFETY: ends the child without running the parent's
            // destructors or atexit handlers a second time.
            unsafe { libc::_exit(code) }
        }
        pid => {
            if let Some(mut r) = recorder {
                r.owned = false;
            }
            drop(suspended);
            Ok(Some(pid as u32))
        }
    }
}

/// The loader's child: detached from the caller's session and stdio, with
/// only its own fds (and a log file) open.
fn child(
    suspended: SuspendedLoader,
    recorder: Option<Recorder>,
    keep: &[RawFd],
    log: Option<&Path>,
) -> i32 {
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 of a valid fd over a standard stream.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    close_others(keep, log);
    let loader = match suspended.resume() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("resuming the memory loader: {e}");
            return 1;
        }
    };
    if let Some(r) = &recorder {
        r.serve(&loader.remote(), &AtomicBool::new(false));
    }
    let report = loader.wait();
    if let Some(r) = &recorder {
        r.save_final(report.as_ref().ok());
    }
    match report {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!("lazy loading failed; the restored process was killed: {e}");
            1
        }
    }
}

/// Closes every fd above stderr but `keep` and the log file's (so the
/// child holds no container lock, pipe or socket of its parent's).
fn close_others(keep: &[RawFd], log: Option<&Path>) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<(RawFd, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).unwrap_or_default()))
        })
        .collect();
    for (fd, target) in fds {
        let is_log = log.is_some_and(|l| l == target);
        if fd > 2 && !keep.contains(&fd) && !is_log {
            // SAFETY: closing an fd of ours nothing in this process uses.
            unsafe { libc::close(fd) };
        }
    }
}
