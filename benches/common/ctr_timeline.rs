//! When things happened in a containerd run, taken from outside containerd
//! and its shims, so that runc's shim and sprout's are timed the same way:
//! - [`EventLog`]: containerd's event stream (`ctr events`). An envelope's
//!   timestamp is set by whoever published it: the shim for `/tasks/*`
//!   (create done, start done, exit reported), containerd for
//!   `/containers/*`.
//! - [`MountLog`]: when a container's rootfs got mounted. Both shims mount
//!   it, in the host's mount namespace, as the first step of `Create`;
//!   /proc/self/mountinfo signals every change of the mount table.
//! - [`AnswerWatch`]: when a function inside a network namespace first
//!   answered an HTTP request.
//!
//! All three read the realtime clock, the one the envelopes carry.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// One event of containerd's stream.
#[derive(Debug, Clone)]
pub struct Event {
    /// The envelope's timestamp.
    pub at: SystemTime,
    pub topic: String,
    /// The container (or namespace, or snapshot) the event is about.
    pub id: String,
    pub body: serde_json::Value,
}

/// `ctr events` in the background, parsed line by line.
pub struct EventLog {
    child: Child,
    events: Arc<(Mutex<Vec<Event>>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl EventLog {
    /// Runs `ctr` (a command naming containerd's address) with `events`.
    /// Subscribed only once an event shows up: see [`EventLog::wait_for`].
    pub fn start(mut ctr: Command) -> EventLog {
        let mut child = ctr
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ctr events");
        let out = child.stdout.take().unwrap();
        let events: Arc<(Mutex<Vec<Event>>, Condvar)> = Arc::default();
        let sink = Arc::clone(&events);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(e) = parse_event_line(&line) {
                    sink.0.lock().unwrap().push(e);
                    sink.1.notify_all();
                }
            }
        });
        EventLog {
            child,
            events,
            reader: Some(reader),
        }
    }

    /// The first event `topic` about `id`, waiting up to `timeout` for it.
    pub fn wait_for(&self, id: &str, topic: &str, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut events = lock.lock().unwrap();
        loop {
            if let Some(e) = events.iter().find(|e| e.id == id && e.topic == topic) {
                return Some(e.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            events = cv.wait_timeout(events, left).unwrap().0;
        }
    }

    /// When event `topic` about `id` was published, if it was.
    pub fn at(&self, id: &str, topic: &str) -> Option<SystemTime> {
        let events = self.events.0.lock().unwrap();
        events
            .iter()
            .find(|e| e.id == id && e.topic == topic)
            .map(|e| e.at)
    }

    /// Forgets the events about `id` (read already).
    pub fn forget(&self, id: &str) {
        self.events.0.lock().unwrap().retain(|e| e.id != id);
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `2026-11-25 23:57:17.94432585 +0000 UTC default /tasks/start {"container_id":…}`
fn parse_event_line(line: &str) -> Option<Event> {
    let mut f = line.splitn(7, ' ');
    let (date, time, offset, _zone, _ns, topic) = (
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
        f.next()?,
    );
    let body: serde_json::Value = serde_json::from_str(f.next().unwrap_or("{}")).ok()?;
    let id = ["container_id", "id", "name", "key"]
        .iter()
        .find_map(|k| body.get(k).and_then(|v| v.as_str()))
        .unwrap_or_default()
        .to_string();
    Some(Event {
        at: parse_time(date, time, offset)?,
        topic: topic.to_string(),
        id,
        body,
    })
}

/// An RFC 3339 time as Go writes it in JSON (`2026-11-25T23:57:17.9448Z`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, rest) = s.split_once('T')?;
    let split = rest.find(['Z', '+', '-'])?;
    let (time, offset) = rest.split_at(split);
    parse_time(date, time, offset)
}

/// A wall-clock time from a date (`YYYY-MM-DD`), a time of day
/// (`HH:MM:SS[.fraction]`) and an offset (`Z`, `+HHMM` or `+HH:MM`).
fn parse_time(date: &str, time: &str, offset: &str) -> Option<SystemTime> {
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    let offset_secs = match offset {
        "Z" | "" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hhmm: String = o[1..].chars().filter(char::is_ascii_digit).collect();
            let (oh, om) = hhmm.split_at(2.min(hhmm.len()));
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().unwrap_or(0) * 60)
        }
    };
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Mount points under one directory, with the time each first showed up.
pub struct MountLog {
    seen: Arc<Mutex<HashMap<PathBuf, SystemTime>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MountLog {
    /// Watches for mounts under `under` from now on.
    pub fn start(under: &Path) -> MountLog {
        let seen: Arc<Mutex<HashMap<PathBuf, SystemTime>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut file = File::open("/proc/self/mountinfo").unwrap();
        let (under, sink, stopped) = (under.to_path_buf(), Arc::clone(&seen), Arc::clone(&stop));
        // The first read arms the change notification.
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
                // A timeout only to notice `stop`.
                let changed = poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) > 0;
                if !changed {
                    continue;
                }
                // The change happened just before the wake-up: its time.
                let at = SystemTime::now();
                text.clear();
                if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
                    break;
                }
                let mut seen = sink.lock().unwrap();
                for point in text.lines().filter_map(|l| l.split(' ').nth(4)) {
                    let p = Path::new(point);
                    if p.starts_with(&under) && !seen.contains_key(p) {
                        seen.insert(p.to_path_buf(), at);
                    }
                }
            }
        });
        MountLog {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// When `target` was first seen mounted, waiting up to `timeout`
    /// (the watcher may lag a little behind the mount).
    pub fn wait_for(&self, target: &Path, timeout: Duration) -> Option<SystemTime> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.seen.lock().unwrap().get(target) {
                return Some(*t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for MountLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client that asks `GET /` of 127.0.0.1:`port` inside a network
/// namespace, over and over from one thread, until the first 200 answer.
pub struct AnswerWatch {
    thread: Option<JoinHandle<Option<SystemTime>>>,
    cancel: Arc<AtomicBool>,
}

/// Pause between two refused connections.
const RETRY: Duration = Duration::from_micros(200);

impl AnswerWatch {
    /// Starts asking now; gives up after `timeout`.
    pub fn start(netns: OwnedFd, port: u16, timeout: Duration) -> AnswerWatch {
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let thread = std::thread::spawn(move || {
            // SAFETY: setns of this thread only (network namespaces are per
            // thread); the thread ends after its requests.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            let deadline = Instant::now() + timeout;
            while !cancelled.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut resp = String::new();
                    let answered = c
                        .write_all(b"GET /bench HTTP/1.1\r\nHost: fn\r\n\r\n")
                        .and_then(|()| c.read_to_string(&mut resp));
                    if answered.is_ok() && resp.starts_with("HTTP/1.1 200") {
                        return Some(SystemTime::now());
                    }
                }
                std::thread::sleep(RETRY);
            }
            None
        });
        AnswerWatch {
            thread: Some(thread),
            cancel,
        }
    }

    /// When the first answer came; `None` after the timeout.
    pub fn wait(mut self) -> Option<SystemTime> {
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for AnswerWatch {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `b - a`, zero if `b` is earlier.
pub fn span(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// One GET sent now to 127.0.0.1:`port` inside a network namespace whose
/// server need not run yet: a frozen pool instance's listener still
/// completes the handshake in the kernel and queues the request, which is
/// answered once the instance is thawed. Reads the answer in the
/// background and keeps the time it came.
pub struct PendingAnswer {
    thread: Option<JoinHandle<Option<SystemTime>>>,
    /// To cut the read short when the answer is not waited for.
    stream: std::net::TcpStream,
}

impl PendingAnswer {
    /// Connects and sends before it returns; gives up on the answer after
    /// `timeout`.
    pub fn send(netns: OwnedFd, port: u16, timeout: Duration) -> std::io::Result<PendingAnswer> {
        let (sent, is_sent) = std::sync::mpsc::channel::<std::io::Result<std::net::TcpStream>>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns of this thread only (network namespaces are per
            // thread); the thread ends after its request.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = sent.send(Err(std::io::Error::last_os_error()));
                return None;
            }
            let connected = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
                c.set_read_timeout(Some(timeout))?;
                c.write_all(b"GET /bench HTTP/1.1\r\nHost: fn\r\n\r\n")?;
                Ok(c)
            });
            let mut c = match connected.and_then(|c| Ok((c.try_clone()?, c))) {
                Ok((mine, theirs)) => {
                    let _ = sent.send(Ok(theirs));
                    mine
                }
                Err(e) => {
                    let _ = sent.send(Err(e));
                    return None;
                }
            };
            let mut resp = String::new();
            let answered = c.read_to_string(&mut resp).is_ok() && resp.starts_with("HTTP/1.1 200");
            answered.then(SystemTime::now)
        });
        match is_sent.recv() {
            Ok(Ok(stream)) => Ok(PendingAnswer {
                thread: Some(thread),
                stream,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(std::io::Error::other("the request thread died"))
            }
        }
    }

    /// When the answer came; `None` after the timeout or without a 200.
    pub fn wait(mut self) -> Option<SystemTime> {
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            let _ = t.join();
        }
    }
}
