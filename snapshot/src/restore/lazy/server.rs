//! The loader's loop: one thread that owns every userfaultfd of a lazy
//! restore and does all of its work.
//!
//! One thread, so that no copy can race an event: the kernel refuses a
//! fill (`EAGAIN`) while an `mremap`, `munmap`, `MADV_DONTNEED` or fork
//! event is unread, and once this thread has read the event it updates its
//! state before it fills anything again. So a page the process dropped is
//! never filled with snapshot data afterwards, and a fork's child starts
//! with exactly the parent's missing pages.
//!
//! Each turn: commands (finish recording, suspend), then every message of
//! every userfaultfd (faults first resolved, events applied), then faults
//! the kernel asked to retry, then one unit of work — a run of the working
//! set before the process runs, later a run of the rest ("background") —
//! of at most [`STEP_PAGES`], so a fault waits for one unit at most. When
//! nothing is left to load, the userfaultfds are closed: the kernel drops
//! every registration with them and faults are ordinary anonymous faults
//! again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::WorkingSet;

use super::pages::{PageIndex, Space};
use super::source::Source;
use super::uffd::{Fill, Msg, Uffd};
use super::{Command, Control, LoadReport, PAGE};
use crate::restore::RestoreError;

/// Most pages per unit of work (1 MiB).
const STEP_PAGES: usize = 256;
/// Stored pages between two runs of the working set that are loaded with
/// them (one fill instead of two, and likely used too) when they come from
/// `pages.img` anyway (`working-set.img` holds no gaps).
const WORKING_SET_GAP_PAGES: usize = 4;
/// Pages loaded on one fault, from the faulting page on (when not
/// recording, where the fault itself is what is learned): the fault reads
/// and verifies a whole chunk anyway.
const FAULT_AROUND_PAGES: usize = 32;
/// Chunks read at once by the background pass (faults read one).
const READ_AHEAD_CHUNKS: usize = 8;
/// How long the background pass waits once a working set is in (or the
/// loader resumed in another process): the process's first request, which
/// usually follows its restore at once and finds its pages loaded, gets
/// the CPUs and the disk first. Faults are served meanwhile. Without a
/// working set the background pass starts at once: it loads pages ahead of
/// the request's faults.
pub(super) const BACKGROUND_HEAD_START: Duration = Duration::from_millis(10);

static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];

/// What the loader does between faults.
#[derive(Debug)]
pub(super) enum Mode {
    /// Load the working set, then the rest.
    Prefetch,
    /// Load only what faults, and remember it (original page addresses).
    Record(Vec<u64>),
    /// Load the rest.
    Background,
}

/// The working set to load first, as the loader sees it.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Runs of stored pages `(first page number, count)`.
    pub(super) stored: Vec<(usize, usize)>,
    /// Ranges (original addresses) the image stores nothing for: mapped
    /// zero-filled ahead of time.
    pub(super) zero: Vec<(u64, u64)>,
}

impl Plan {
    /// The plan for `ws`; `prefetched(offset)` tells whether the page at
    /// that `pages.img` offset comes from `working-set.img` (runs are
    /// joined across a gap only if its pages do: a gap page that does not
    /// would cost a read of its chunk).
    pub(super) fn new(
        index: &PageIndex,
        ws: &WorkingSet,
        prefetched: impl Fn(u64) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let ranges = index.ranges();
        for r in ws.ranges() {
            // Registered (lazily loaded) part only.
            let from = ranges.partition_point(|&(_, re)| re <= r.start);
            for &(rs, re) in ranges[from..].iter().take_while(|&&(rs, _)| rs < r.end()) {
                let (a, b) = (r.start.max(rs), r.end().min(re));
                if a >= b {
                    continue;
                }
                let mut zero_from = a;
                let pages = index.pages_in(a, b);
                for n in pages {
                    let (addr, _) = index.page(n);
                    if addr > zero_from {
                        plan.zero.push((zero_from, addr));
                    }
                    zero_from = addr + PAGE;
                    // Joined to the previous run across a small gap of
                    // stored pages, contiguous in memory.
                    match plan.stored.last_mut() {
                        Some((f, c))
                            if n >= *f + *c
                                && n - (*f + *c) <= WORKING_SET_GAP_PAGES
                                && index.page(*f).0 + (n - *f) as u64 * PAGE == addr
                                && (*f + *c..n).all(|g| prefetched(index.page(g).1)) =>
                        {
                            *c = n - *f + 1
                        }
                        _ => plan.stored.push((n, 1)),
                    }
                }
                if zero_from < b {
                    plan.zero.push((zero_from, b));
                }
            }
        }
        plan
    }
}

/// Everything the loop owns. Movable to another thread or, between
/// turns, into a forked child process ([`super::SuspendedLoader`]).
#[derive(Debug)]
pub(crate) struct Job {
    pub(super) index: Arc<PageIndex>,
    pub(super) source: Source,
    /// The restored process's address space first, then its forks'.
    pub(super) spaces: Vec<Space>,
    /// pidfd of the restored process, until it exits.
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) control: Arc<Control>,
    pub(super) mode: Mode,
    pub(super) plan: Plan,
    pub(super) plan_at: (usize, usize),
    /// How long the background pass waits after the working set
    /// ([`BACKGROUND_HEAD_START`] if there is one).
    pub(super) head_start: Duration,
    /// When the background pass may start.
    pub(super) background_from: Instant,
    pub(super) report: LoadReport,
    pub(super) started: Instant,
    pub(super) buf: Vec<u8>,
}

/// How a loop ended.
pub(super) enum Exit {
    /// Everything is loaded (or the processes are gone).
    Done(Box<Result<LoadReport, RestoreError>>),
    /// Stopped between turns on request, to go on elsewhere.
    Suspended(Box<Job>),
}

/// What a fill of a run of pages came to.
enum Filled {
    /// The first page is there now (filled by us or found present).
    Ok,
    /// An event is pending: read it, then retry.
    Again,
    /// The address space is gone.
    Gone,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Io { what, source }
}

impl Job {
    /// Runs the loop to its end; on a failure the restored process is
    /// killed (a process left waiting on a page that never comes would
    /// hang; one given zeros would be silently corrupt).
    pub(super) fn run(mut self: Box<Self>) -> Exit {
        if matches!(self.mode, Mode::Background) {
            // Resumed (in a forked child) after its working set.
            background_priority();
        }
        match self.serve() {
            Ok(true) => Exit::Suspended(self),
            Ok(false) => {
                self.finish();
                Exit::Done(Box::new(Ok(std::mem::take(&mut self.report))))
            }
            Err(e) => {
                tracing::debug!("lazy loading failed, killing the restored process: {e}");
                self.kill();
                self.finish();
                Exit::Done(Box::new(Err(e)))
            }
        }
    }

    fn kill(&self) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }

    /// Closes every userfaultfd (the kernel unregisters all their ranges
    /// and wakes any fault still waiting) and reports.
    fn finish(&mut self) {
        self.spaces.clear();
        self.report.read_bytes = self.source.read_bytes;
        self.report.read_time = self.source.read_time;
        self.report.elapsed = self.started.elapsed();
        if let Mode::Record(pages) = &mut self.mode {
            let pages = std::mem::take(pages);
            self.report.working_set = Some(WorkingSet::from_pages(*self.source_digest(), pages));
        }
        self.control.prefetched.set();
        self.control.close();
    }

    fn source_digest(&self) -> &crate::image::Sha256Digest {
        self.source.digest()
    }

    fn recording(&self) -> bool {
        matches!(self.mode, Mode::Record(_))
    }

    fn left(&self) -> usize {
        self.spaces.iter().map(|s| s.pending.len()).sum()
    }

    fn has_work(&self) -> bool {
        match self.mode {
            // Forks are loaded in the background even while recording:
            // that is also how the loader learns that a child is gone.
            Mode::Record(_) => self.spaces.iter().any(|s| !s.main && s.pending.len() > 0),
            Mode::Prefetch => true,
            Mode::Background => self.left() > 0,
        }
    }

    /// The loop. `Ok(true)`: suspended; `Ok(false)`: done.
    fn serve(&mut self) -> Result<bool, RestoreError> {
        let mut msgs = Vec::new();
        loop {
            for cmd in self.control.take_commands() {
                match cmd {
                    Command::FinishRecording(reply) => {
                        let answer = match std::mem::replace(&mut self.mode, Mode::Background) {
                            Mode::Record(pages) => {
                                self.start_background();
                                Ok(WorkingSet::from_pages(*self.source_digest(), pages))
                            }
                            other => {
                                self.mode = other;
                                Err(RestoreError::NotRecording)
                            }
                        };
                        let _ = reply.send(answer);
                    }
                    // Asked for (or waited for): no head start.
                    Command::StartBackground => self.background_from = Instant::now(),
                    Command::Suspend => return Ok(true),
                }
            }
            if self.spaces.is_empty() {
                return Ok(false);
            }
            // Faults still deferred are woken when the userfaultfds close
            // and become ordinary faults.
            if !self.recording() && !self.has_work() {
                return Ok(false);
            }
            let ready = self.poll(self.poll_timeout())?;
            if ready.main_exited {
                // Its address space is gone: nothing more to do there.
                self.pidfd = None;
                for s in self.spaces.iter_mut().filter(|s| s.main) {
                    s.gone = true;
                }
            }
            let mut i = 0;
            while i < self.spaces.len() {
                if ready.uffd.get(i).copied().unwrap_or(true) {
                    self.drain(i, &mut msgs)?;
                }
                i += 1;
            }
            self.retry_deferred()?;
            // A space with nothing left to load is let go (its
            // userfaultfd closed), but the recording process's and, until
            // its working set is in, the restored process's.
            let keep_main = !matches!(self.mode, Mode::Background);
            self.spaces
                .retain(|s| !s.gone && (s.pending.len() > 0 || (s.main && keep_main)));
            if self.spaces.is_empty() {
                return Ok(false);
            }
            match self.mode {
                Mode::Prefetch => self.prefetch_step()?,
                Mode::Background if Instant::now() < self.background_from => {}
                Mode::Background | Mode::Record(_) => self.background_step()?,
            }
        }
    }

    /// How long a poll may wait (ms, -1: until something happens): not at
    /// all with work to do, until the background pass may start during its
    /// head start.
    fn poll_timeout(&self) -> i32 {
        if !self.has_work() {
            return -1;
        }
        match self.mode {
            Mode::Background => {
                let wait = self
                    .background_from
                    .saturating_duration_since(Instant::now());
                wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
            _ => 0,
        }
    }

    /// Waits up to `timeout_ms` (-1: until something happens) for a
    /// command, the restored process's exit or a userfaultfd message.
    fn poll(&self, timeout_ms: i32) -> Result<Ready, RestoreError> {
        let mut fds = Vec::with_capacity(self.spaces.len() + 2);
        let ev = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(ev(self.control.wake_fd()));
        fds.push(ev(self.pidfd.as_ref().map_or(-1, |f| f.as_raw_fd())));
        for s in &self.spaces {
            fds.push(ev(s.uffd.fd().as_raw_fd()));
        }
        loop {
            // SAFETY: poll over a live array of pollfd of its length.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if r >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io_err("polling the userfaultfds")(e));
            }
        }
        if fds[0].revents != 0 {
            self.control.clear_wake();
        }
        let any =
            |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        Ok(Ready {
            main_exited: any(&fds[1]),
            uffd: fds[2..].iter().map(|p| timeout_ms == 0 || any(p)).collect(),
        })
    }

    /// Reads and handles every pending message of space `si`.
    fn drain(&mut self, si: usize, msgs: &mut Vec<Msg>) -> Result<(), RestoreError> {
        loop {
            msgs.clear();
            let n = match self.spaces[si].uffd.read(msgs) {
                Ok(n) => n,
                Err(e) => return Err(io_err("reading a userfaultfd")(e)),
            };
            if n == 0 {
                return Ok(());
            }
            for m in std::mem::take(msgs) {
                self.handle(si, m)?;
            }
        }
    }

    fn handle(&mut self, si: usize, m: Msg) -> Result<(), RestoreError> {
        match m {
            Msg::Fault { addr, write } => {
                if !self.fault(si, addr, write)? {
                    self.spaces[si].deferred.push((addr, write));
                }
            }
            Msg::Fork { fd } => {
                // SAFETY: the kernel installed this fd in our table for the
                // message we read; nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let parent = &self.spaces[si];
                let child = Space {
                    uffd: Uffd::new(fd),
                    layout: parent.layout.clone(),
                    pending: parent.pending.clone(),
                    deferred: Vec::new(),
                    cursor: 0,
                    main: false,
                    gone: false,
                };
                self.spaces.push(child);
                self.report.forks += 1;
            }
            Msg::Remap { from, to, len } => self.spaces[si].layout.remap(from, to, len),
            Msg::Remove { start, end } => {
                let index = Arc::clone(&self.index);
                let s = &mut self.spaces[si];
                for (a, b) in s.layout.orig_ranges(start, end) {
                    self.report.dropped_pages += s.forget(&index, a, b);
                }
            }
            Msg::Unmap { start, end } => {
                let index = Arc::clone(&self.index);
                let s = &mut self.spaces[si];
                for (a, b) in s.layout.unmap(start, end) {
                    self.report.dropped_pages += s.forget(&index, a, b);
                }
            }
            Msg::Unknown(e) => tracing::debug!("userfaultfd event {e:#x} ignored"),
        }
        Ok(())
    }

    /// Resolves a fault at `addr` of space `si`: its stored page (and the
    /// pending ones after it) from the image, or a zero page. `false`: the
    /// kernel asked to retry after pending events.
    fn fault(&mut self, si: usize, addr: u64, write: bool) -> Result<bool, RestoreError> {
        let orig = self.spaces[si].layout.to_orig(addr);
        if let (Some(o), Mode::Record(pages)) = (orig, &mut self.mode)
            && self.index.in_ranges(o)
        {
            pages.push(o);
        }
        let stored = orig
            .and_then(|o| self.index.lookup(o))
            .filter(|&n| self.spaces[si].pending.contains(n));
        if let Some(n) = stored {
            let max = if self.recording() {
                1
            } else {
                FAULT_AROUND_PAGES
            };
            let before = self.spaces[si].pending.len();
            let r = self.fill_stored(si, n, max, 1)?;
            self.report.fault_pages += (before - self.spaces[si].pending.len()) as u64;
            self.report.faults += 1;
            return Ok(match r {
                Filled::Ok => true,
                Filled::Again => false,
                Filled::Gone => {
                    self.spaces[si].gone = true;
                    true
                }
            });
        }
        let s = &mut self.spaces[si];
        let r = if write {
            s.uffd.copy(addr, &ZERO_PAGE)
        } else {
            s.uffd.zeropage(addr, PAGE)
        }
        .map_err(io_err("filling a zero page"))?;
        match r {
            Fill::Done(_) => self.report.zero_faults += 1,
            Fill::Exists | Fill::NotRegistered => wake(s, addr),
            Fill::Again => return Ok(false),
            Fill::Gone => s.gone = true,
        }
        Ok(true)
    }

    fn retry_deferred(&mut self) -> Result<(), RestoreError> {
        for si in 0..self.spaces.len() {
            let waiting = std::mem::take(&mut self.spaces[si].deferred);
            for (addr, write) in waiting {
                if !self.fault(si, addr, write)? {
                    self.spaces[si].deferred.push((addr, write));
                }
            }
        }
        Ok(())
    }

    /// Fills stored page `n` of space `si` and the pending pages right
    /// after it (contiguous in memory), at most `max` pages.
    fn fill_stored(
        &mut self,
        si: usize,
        n: usize,
        max: usize,
        ahead: usize,
    ) -> Result<Filled, RestoreError> {
        let Job {
            index,
            source,
            spaces,
            buf,
            ..
        } = self;
        let s = &mut spaces[si];
        let (orig0, _) = index.page(n);
        let Some(cur0) = s.layout.to_cur(orig0) else {
            // Unmapped without our hearing of it: nothing to fill.
            s.pending.remove(n);
            return Ok(Filled::Ok);
        };
        let mut k = 1;
        while k < max
            && n + k < index.page_count()
            && s.pending.contains(n + k)
            && index.page(n + k).0 == orig0 + k as u64 * PAGE
            && s.layout.to_cur(orig0 + k as u64 * PAGE) == Some(cur0 + k as u64 * PAGE)
        {
            k += 1;
        }
        let (_, off0) = index.page(n);
        let bytes = k as u64 * PAGE;
        let contiguous = (1..k).all(|j| index.page(n + j).1 == off0 + j as u64 * PAGE);
        let data: &[u8] = if contiguous && source.in_one_piece(off0, bytes) {
            // Straight from working-set.img or the verified chunk.
            source.bytes(off0, bytes as usize, ahead)?
        } else {
            buf.resize(bytes as usize, 0);
            for j in 0..k {
                let (_, off) = index.page(n + j);
                source.page(
                    off,
                    &mut buf[j * PAGE as usize..(j + 1) * PAGE as usize],
                    ahead,
                )?;
            }
            &buf[..]
        };
        let t0 = Instant::now();
        let r = fill_run(s, n, k, cur0, data);
        self.report.fill_time += t0.elapsed();
        r
    }

    /// Runs of the working set, up to [`STEP_PAGES`]; at its end, the
    /// process may run with nothing of its working set missing.
    fn prefetch_step(&mut self) -> Result<(), RestoreError> {
        let mut budget = STEP_PAGES;
        while budget > 0 && matches!(self.mode, Mode::Prefetch) {
            let before = self.plan_at;
            let pages = self.prefetch_one()?;
            if self.plan_at == before {
                // Retry after the events (EAGAIN).
                break;
            }
            budget = budget.saturating_sub(pages.max(1));
        }
        Ok(())
    }

    /// Loads (part of) the next run of the working set; the pages it filled.
    fn prefetch_one(&mut self) -> Result<usize, RestoreError> {
        // Before the process runs there is one space, its own.
        if !self.spaces.first().is_some_and(|s| s.main) {
            self.prefetch_done();
            return Ok(0);
        }
        let (ri, done_in_run) = self.plan_at;
        if let Some(&(first, count)) = self.plan.stored.get(ri) {
            let n = first + done_in_run;
            let max = (count - done_in_run).min(STEP_PAGES);
            let before = self.spaces[0].pending.len();
            let r = if self.spaces[0].pending.contains(n) {
                self.fill_stored(0, n, max, 1)?
            } else {
                Filled::Ok
            };
            let filled = before - self.spaces[0].pending.len();
            self.report.prefetched_pages += filled as u64;
            match r {
                Filled::Again => {}
                Filled::Gone => self.spaces[0].gone = true,
                Filled::Ok => {
                    // Pages that were loaded already or dropped count as
                    // done too.
                    let step = filled.max(1);
                    self.plan_at = if done_in_run + step >= count {
                        (ri + 1, 0)
                    } else {
                        (ri, done_in_run + step)
                    };
                }
            }
            return Ok(filled);
        }
        let zi = ri - self.plan.stored.len();
        if let Some(&(a, b)) = self.plan.zero.get(zi) {
            let start = a + done_in_run as u64 * PAGE;
            let s = &mut self.spaces[0];
            let advance = match s
                .uffd
                .zeropage(start, b - start)
                .map_err(io_err("filling zero pages"))?
            {
                Fill::Done(bytes) => {
                    self.report.prefetched_zero_pages += bytes / PAGE;
                    (bytes / PAGE) as usize
                }
                Fill::Exists | Fill::NotRegistered => 1,
                Fill::Again => 0,
                Fill::Gone => {
                    s.gone = true;
                    0
                }
            };
            let total = ((b - a) / PAGE) as usize;
            self.plan_at = if done_in_run + advance >= total {
                (ri + 1, 0)
            } else {
                (ri, done_in_run + advance)
            };
            // A zero page costs far less than a stored one.
            return Ok(advance / 16);
        }
        self.prefetch_done();
        Ok(0)
    }

    fn prefetch_done(&mut self) {
        self.report.prefetch_time = self.started.elapsed();
        self.report.prefetch_read_time = self.source.read_time;
        self.report.prefetch_fill_time = self.report.fill_time;
        // Nothing after the working set comes from working-set.img (its
        // extents' other pages were filled before the process ran).
        self.source.drop_prefetched();
        self.control.prefetched.set();
        self.start_background();
        self.release_loaded_ranges();
    }

    /// The rest, in the background, after its head start. Its reads are
    /// sequential (the kernel reads ahead on its own); no readahead of the
    /// whole file is asked for, which would queue a fault's read behind
    /// it.
    fn start_background(&mut self) {
        self.mode = Mode::Background;
        self.background_from = Instant::now() + self.head_start;
        background_priority();
    }

    /// Unregisters the ranges whose stored pages are all loaded (the
    /// working set held all of them): their untouched pages are ordinary
    /// zero-fill memory now, with no round trip through this loop.
    fn release_loaded_ranges(&mut self) {
        let Some(s) = self.spaces.first().filter(|s| s.main) else {
            return;
        };
        for &(a, b) in self.index.ranges() {
            if s.layout.to_cur(a) != Some(a) {
                continue;
            }
            if self.index.pages_in(a, b).all(|n| !s.pending.contains(n)) {
                // A range changed under us (split, partly unmapped) is
                // refused; it stays registered until the end.
                let _ = s.uffd.unregister(a, b - a);
            }
        }
    }

    /// One run of what is left, in address order.
    fn background_step(&mut self) -> Result<(), RestoreError> {
        let recording = self.recording();
        let Some(si) = self
            .spaces
            .iter()
            .position(|s| s.pending.len() > 0 && !(recording && s.main))
        else {
            return Ok(());
        };
        let s = &self.spaces[si];
        let Some(n) = s
            .pending
            .next_from(s.cursor)
            .or_else(|| s.pending.next_from(0))
        else {
            return Ok(());
        };
        self.spaces[si].cursor = n;
        let before = self.spaces[si].pending.len();
        match self.fill_stored(si, n, STEP_PAGES, READ_AHEAD_CHUNKS)? {
            Filled::Gone => self.spaces[si].gone = true,
            Filled::Ok | Filled::Again => {}
        }
        self.report.background_pages += (before - self.spaces[si].pending.len()) as u64;
        Ok(())
    }
}

/// Fills the `k` pages of `buf` at `cur0` in space `s` (stored pages
/// `n..`), marking what went in; page by page once the kernel says the
/// run spans mappings.
fn fill_run(
    s: &mut Space,
    n: usize,
    k: usize,
    cur0: u64,
    buf: &[u8],
) -> Result<Filled, RestoreError> {
    let mut single = false;
    let mut done = 0usize;
    let mut first_ok = false;
    while done < k {
        let end = if single { done + 1 } else { k };
        let src = &buf[done * PAGE as usize..end * PAGE as usize];
        let dst = cur0 + done as u64 * PAGE;
        match s.uffd.copy(dst, src).map_err(io_err("filling pages"))? {
            Fill::Done(bytes) => {
                let pages = (bytes / PAGE) as usize;
                for j in done..done + pages {
                    s.pending.remove(n + j);
                }
                first_ok |= done == 0;
                done += pages;
            }
            Fill::Exists => {
                // Present already (loaded before a fork, or a race with
                // a fill of ours): nothing to do for it.
                s.pending.remove(n + done);
                first_ok |= done == 0;
                if done == 0 {
                    wake(s, dst);
                }
                done += 1;
            }
            Fill::NotRegistered if !single && k - done > 1 => single = true,
            Fill::NotRegistered => {
                // Not ours any more (e.g. unmapped and mapped anew).
                s.pending.remove(n + done);
                if done == 0 {
                    wake(s, dst);
                    first_ok = true;
                }
                done += 1;
            }
            Fill::Again => {
                return Ok(if first_ok { Filled::Ok } else { Filled::Again });
            }
            Fill::Gone => return Ok(Filled::Gone),
        }
    }
    Ok(Filled::Ok)
}

/// Lowers this thread's priority (nice 10) for the background pass: the
/// restored process has what it needs first and should get the CPU before
/// the rest of its memory does; a fault still gets served (the faulting
/// thread waits, so it does not compete), only later under contention.
fn background_priority() {
    // SAFETY: gettid and setpriority on this thread, integer arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

fn wake(s: &Space, addr: u64) {
    if let Err(e) = s.uffd.wake(addr, PAGE) {
        tracing::debug!("UFFDIO_WAKE {addr:#x}: {e}");
    }
}

/// What a poll found.
struct Ready {
    main_exited: bool,
    /// Per space: has messages (or may: after a zero timeout every space
    /// is read).
    uffd: Vec<bool>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("main_exited", &self.main_exited)
            .finish()
    }
}

/// The loop moves to another thread (and process) with everything it owns.
const _: () = {
    const fn send<T: Send>() {}
    send::<Job>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Sha256Digest;

    #[test]
    fn a_working_set_splits_into_stored_runs_and_zero_ranges() {
        let ix = PageIndex::from_runs(
            &[(0x10000, 0, 2), (0x12000, 0x8000, 1), (0x40000, 0x2000, 3)],
            &[(0x10000, 0x20000), (0x40000, 0x48000)],
        );
        let ws = WorkingSet::from_pages(
            Sha256Digest::of(b"x"),
            [
                // Stored, contiguous in memory (two runs of the file):
                0x10000, 0x11000, 0x12000, // not stored:
                0x13000, // outside every registered range:
                0x30000, // stored and not:
                0x41000, 0x43000, 0x44000,
            ],
        );
        let plan = Plan::new(&ix, &ws, |_| true);
        assert_eq!(plan.stored, vec![(0, 3), (4, 1)]);
        assert_eq!(plan.zero, vec![(0x13000, 0x14000), (0x43000, 0x45000)]);
        // Runs are joined across a gap only if working-set.img holds it.
        let ws = WorkingSet::from_pages(Sha256Digest::of(b"x"), [0x40000, 0x42000]);
        assert_eq!(Plan::new(&ix, &ws, |_| true).stored, vec![(3, 3)]);
        assert_eq!(
            Plan::new(&ix, &ws, |off| off != 0x3000).stored,
            vec![(3, 1), (5, 1)]
        );
    }
}
