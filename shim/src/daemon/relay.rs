//! The stdout and stderr of a pool instance. A warm instance is forked
//! before anyone knows who will claim it, so its output goes into pipes
//! that sproutd reads and copies to wherever its owner wants it now: the
//! instance's log file while it sits in the pool or serves leases, the
//! claimant's files or fds once claimed. Switching costs a lock, not a
//! ptrace round trip into the instance.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{lock, open_stdio};

/// Where stdout (0) and stderr (1) go now; `None` drops it (the claimant
/// went away). Shared so that the copy writes outside the lock: a write
/// into a fifo nobody reads blocks, and must not block a switch to new
/// sinks.
struct Sinks([Option<Arc<fs::File>>; 2]);

/// The most an instance's log file (its output while it sits in the pool
/// or serves leases) holds: beyond it the file starts over, so a function
/// that writes without end cannot fill sproutd's disk.
const LOG_LIMIT: u64 = 64 << 20;

/// A running relay; dropping it does not stop the copy (the thread ends
/// when the instance closes its end of both pipes, i.e. when it is gone).
#[derive(Clone)]
pub(crate) struct Relay {
    sinks: Arc<Mutex<Sinks>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Relay {
    /// Starts a relay writing to `log` (appended, created 0600) and
    /// returns it with the instance's stdio: `/dev/null`, and the write
    /// ends of the two pipes.
    pub(crate) fn start(id: &str, log: &Path) -> io::Result<(Relay, [OwnedFd; 3])> {
        let out_log = fs::File::from(open_stdio(Some(log), true)?);
        let err_log = out_log.try_clone()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdin = open_stdio(None, false)?;
        let sinks = Arc::new(Mutex::new(Sinks([
            Some(Arc::new(out_log)),
            Some(Arc::new(err_log)),
        ])));
        let s = sinks.clone();
        let log = lock(&sinks).0[0].clone();
        let name = format!("relay-{id}");
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .stack_size(64 * 1024)
            .spawn(move || copy_until_closed(out_r, err_r, &s, log, LOG_LIMIT))?;
        Ok((Relay { sinks }, [stdin, out_w, err_w]))
    }

    /// Sends the output to `out` and `err` from now on. Never waits for
    /// a write to the old sinks.
    pub(crate) fn redirect(&self, out: OwnedFd, err: OwnedFd) {
        lock(&self.sinks).0 = [
            Some(Arc::new(fs::File::from(out))),
            Some(Arc::new(fs::File::from(err))),
        ];
    }
}

/// Copies both pipes to the current sinks until both are closed. The log
/// file (`log`, which both streams start in) is emptied whenever it would
/// grow beyond `limit`.
fn copy_until_closed(
    out: OwnedFd,
    err: OwnedFd,
    sinks: &Mutex<Sinks>,
    log: Option<Arc<fs::File>>,
    limit: u64,
) {
    let mut pipes = [Some(fs::File::from(out)), Some(fs::File::from(err))];
    let mut buf = vec![0u8; 64 * 1024];
    while pipes.iter().any(Option::is_some) {
        let mut pfds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|p| libc::pollfd {
                fd: p.as_ref().map_or(-1, |f| f.as_fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd for its length; a
        // negative fd is ignored by poll.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for (i, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let Some(pipe) = pipes[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut buf) {
                Ok(0) => pipes[i] = None,
                Ok(n) => {
                    let Some(f) = lock(sinks).0[i].clone() else {
                        continue;
                    };
                    if let Some(log) = log.as_ref().filter(|l| same_file(l, &f))
                        && log.metadata().is_ok_and(|m| m.len() + n as u64 > limit)
                    {
                        // Appends go to the new end (O_APPEND).
                        let _ = log.set_len(0);
                        let _ = (&**log)
                            .write_all(b"[sproutd: the log was over its limit and starts over]\n");
                    }
                    // A sink that fails (a claimant's fifo nobody reads
                    // any more) is dropped rather than retried forever,
                    // unless it was replaced meanwhile.
                    if (&*f).write_all(&buf[..n]).is_err() {
                        let sink = &mut lock(sinks).0[i];
                        if sink.as_ref().is_some_and(|now| Arc::ptr_eq(now, &f)) {
                            *sink = None;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
}

/// Whether two sinks write to one open file (the log's two streams are
/// two handles of it).
fn same_file(a: &fs::File, b: &fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_starts_over_beyond_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("l.log");
        let log = Arc::new(fs::File::from(open_stdio(Some(&log_path), true).unwrap()));
        let sinks = Mutex::new(Sinks([Some(log.clone()), Some(log.clone())]));
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = fs::File::from(out_w);
            for _ in 0..10 {
                w.write_all(&[b'x'; 1000]).unwrap();
                // One read per write, as output comes in a running process.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            drop(err_w);
        });
        copy_until_closed(out_r, err_r, &sinks, Some(log), 4096);
        writer.join().unwrap();
        let len = fs::metadata(&log_path).unwrap().len();
        // At most the limit plus one read (the pipe's content at once
        // under load).
        assert!(len <= 10_000 + 100, "the log holds {len} bytes");
        assert!(
            fs::read_to_string(&log_path)
                .unwrap()
                .contains("starts over")
        );
    }

    #[test]
    fn copies_to_the_log_then_to_the_new_sinks_until_closed() {
        let dir = std::env::temp_dir().join(format!("sprout-relay-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("i.log");
        let (relay, [_stdin, out_w, err_w]) = Relay::start("i", &log).unwrap();
        let mut out_w = fs::File::from(out_w);
        let mut err_w = fs::File::from(err_w);
        out_w.write_all(b"to the log\n").unwrap();
        err_w.write_all(b"err to the log\n").unwrap();
        let wait_for = |p: &Path, want: &str| {
            for _ in 0..500 {
                if fs::read_to_string(p).unwrap_or_default().contains(want) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            panic!("{} never held {want:?}", p.display());
        };
        wait_for(&log, "err to the log");
        let claimed = dir.join("claimed.out");
        let claimed_err = dir.join("claimed.err");
        relay.redirect(
            open_stdio(Some(&claimed), true).unwrap(),
            open_stdio(Some(&claimed_err), true).unwrap(),
        );
        out_w.write_all(b"to the claimant\n").unwrap();
        err_w.write_all(b"err to the claimant\n").unwrap();
        wait_for(&claimed, "to the claimant");
        wait_for(&claimed_err, "err to the claimant");
        assert!(!fs::read_to_string(&log).unwrap().contains("claimant"));
        drop((out_w, err_w));
        fs::remove_dir_all(&dir).unwrap();
    }
    #[test]
    fn a_sink_nobody_reads_does_not_hold_up_a_redirect() {
        let dir = std::env::temp_dir().join(format!("sprout-relay-b-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (relay, [_stdin, out_w, _err_w]) = Relay::start("b", &dir.join("b.log")).unwrap();
        // A claimant's pipe that is open but never read: once its buffer
        // is full the relay's write to it blocks.
        let (stuck_r, stuck_w) = pipe().unwrap();
        relay.redirect(stuck_w.try_clone().unwrap(), stuck_w);
        let writer = std::thread::spawn(move || {
            let mut out_w = fs::File::from(out_w);
            let chunk = [b'x'; 4096];
            // Four times the pipe's buffer: more than the stuck sink takes.
            for _ in 0..64 {
                if out_w.write_all(&chunk).is_err() {
                    break;
                }
            }
            out_w
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let r = relay.clone();
        let log = dir.join("back.log");
        let log2 = log.clone();
        std::thread::spawn(move || {
            r.redirect(
                open_stdio(Some(&log2), true).unwrap(),
                open_stdio(Some(&log2), true).unwrap(),
            );
            done_tx.send(()).unwrap();
        });
        assert!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .is_ok(),
            "redirect waited for a write into a pipe nobody reads"
        );
        // Reading the stuck pipe lets the blocked write finish; the rest
        // goes to the new sink.
        let drain = std::thread::spawn(move || {
            let mut r = fs::File::from(stuck_r);
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let out_w = writer.join().unwrap();
        drop(out_w);
        drop(relay);
        for _ in 0..2000 {
            if fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(fs::metadata(&log).unwrap().len() > 0);
        drop(drain);
        fs::remove_dir_all(&dir).unwrap();
    }
}
