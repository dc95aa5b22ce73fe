//! Lazy loading of a restored process's anonymous memory with
//! userfaultfd, and the working set that goes first (REAP, FaaSnap).
//!
//! # How
//!
//! The restorer injects `userfaultfd(O_CLOEXEC|O_NONBLOCK)` into the
//! process it rebuilds, takes the fd with `pidfd_getfd` (the target's copy
//! is closed with the other temporary fds) and, once the dumped layout is
//! mapped, registers the private anonymous VMAs that have stored pages
//! (`pages::is_lazy`; private file mappings, shared memory and locked
//! VMAs are still filled up front) in missing mode, asking for the
//! fork, remap, remove and unmap events. From that moment one loader
//! thread (`server`) serves every fault, also those the kernel takes on
//! the process's behalf while the restore goes on (an injected `rseq`
//! registration writes into the thread's TLS). It loads the
//! [`WorkingSet`] first (large contiguous runs per `UFFDIO_COPY`; the
//! restore lets the process run only once that is done), then everything
//! else in the background, page data checked chunk by chunk against the
//! image's hashes before any of it is served. A fault on a page the image
//! does not store, or one the process dropped since, gets a zero page, as
//! an anonymous page would. When nothing is left the userfaultfds are
//! closed: the kernel unregisters everything and the process's memory is
//! ordinary anonymous memory.
//!
//! A working set saved with its pages file (`working-set.img`,
//! [`crate::image::working_set_pages`]) is read in one sequential read on
//! a thread of its own as soon as the image is open (`prepare`), every
//! chunk checked, while the sandbox is prepared; the restore takes it once
//! the layout is mapped (a corrupt or truncated file fails the restore
//! there, before the process runs). It holds the working set's pages and
//! those filled up front (private file mappings, locked and shared memory),
//! so a cold restore reads nothing else of the image before the process
//! runs, and the background pass never reads a chunk of `pages.img` it
//! covers.
//!
//! The background pass gives way to the process's first request: after a
//! working set it starts a few milliseconds late (faults are served
//! meanwhile), at a lower priority, unless someone waits for it
//! ([`Loader::wait`], [`Loader::start_background`]). A loader handed to
//! another process then ([`Loader::suspend`], `sprout restore -d`) is
//! suspended between two polls, not after a turn of background reads.
//!
//! # Memory semantics
//!
//! - A page dropped with `MADV_DONTNEED` before the dump is not stored: it
//!   reads as zeros, as with eager loading.
//! - `MADV_DONTNEED` (or `MADV_REMOVE`/`MADV_FREE`), `munmap`, `mremap`
//!   by the process while pages are missing are reported to the loader
//!   before they take effect; it forgets dropped and unmapped pages (they
//!   are never filled with snapshot data later) and follows moved ones.
//! - A fork while pages are missing hands the loader the child's own
//!   userfaultfd; it loads the child's missing pages as the parent's.
//!   Templates never fork a lazily loaded process: [`crate::template`]
//!   loads eagerly.
//! - Not followed: `MADV_GUARD_INSTALL` and its removal on a page still
//!   missing (the page would come back with snapshot data rather than
//!   zeros). glibc installs guards on fresh thread stacks, never on
//!   restored data.
//!
//! # Failure
//!
//! If the loader fails after the process runs (a chunk found corrupt or
//! unreadable, a userfaultfd error), it kills the restored process with
//! `SIGKILL` — as pid 1 of its pid namespace that takes the whole sandbox —
//! rather than leaving a thread waiting forever on a page or handing it
//! zeros, and [`Loader::wait`] returns the error. A loader killed itself
//! (the process holding it gets `SIGKILL`) closes the userfaultfds
//! uncleanly: the kernel then serves the still missing pages as zeros. Run
//! the restorer under a supervisor that kills the container with it; the
//! window is the loading time (milliseconds for a function's image).
//!
//! # Recording a working set
//!
//! [`MemoryLoading::Record`] loads nothing ahead: every page the process
//! (or the restore on its behalf) touches is loaded when it faults, and
//! remembered, until [`Loader::finish_recording`]; the rest is then loaded
//! in the background. [`WorkingSet::save`] stores it in the image.

mod pages;
mod server;
mod source;
mod uffd;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::image::working_set_pages::{PendingPages, PrefetchedPages};
use crate::image::{Image, WorkingSet};
use crate::ptrace::{Tid, mem};

pub(crate) use pages::{PageIndex, is_lazy};

use super::RestoreError;
use server::{Exit, Job, Mode, Plan};

const PAGE: u64 = 4096;

/// Events the loader follows (see the module docs).
const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;

/// How a restore loads the process's anonymous memory.
#[derive(Debug, Clone, Default)]
pub enum MemoryLoading {
    /// Every stored page is copied in before the process runs.
    #[default]
    Eager,
    /// Private anonymous memory is loaded with userfaultfd: the working
    /// set (if any) before the process runs, the rest on demand and in the
    /// background. The restore returns a [`Loader`].
    Lazy {
        /// Pages to load before the process runs, recorded from an
        /// earlier restore of the same image (checked against it).
        working_set: Option<WorkingSet>,
    },
    /// `Lazy` with the working set stored in the image
    /// (`working-set.json`, read and validated with the manifest), or
    /// none if it has none.
    LazyWithImageWorkingSet,
    /// As `Lazy`, but nothing is loaded ahead and nothing in the
    /// background until [`Loader::finish_recording`]: every fault is
    /// remembered, making the working set of what the process did
    /// meanwhile.
    Record,
}

impl MemoryLoading {
    /// Whether the process's memory is loaded with userfaultfd.
    pub fn is_lazy(&self) -> bool {
        !matches!(self, MemoryLoading::Eager)
    }
}

/// What a [`Loader`] did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Stored pages of the working set loaded before the process ran.
    pub prefetched_pages: u64,
    /// Pages of the working set the image does not store, mapped
    /// zero-filled before the process ran.
    pub prefetched_zero_pages: u64,
    /// From the loader's start to the end of the working set.
    pub prefetch_time: Duration,
    /// Faults on stored pages (each loaded the page and a few after it).
    pub faults: u64,
    /// Stored pages loaded on those faults.
    pub fault_pages: u64,
    /// Faults on pages the image does not store (or the process dropped),
    /// given a zero page.
    pub zero_faults: u64,
    /// Stored pages loaded in the background.
    pub background_pages: u64,
    /// Stored pages the process dropped or unmapped before they were
    /// loaded (never loaded).
    pub dropped_pages: u64,
    /// Forks served while pages were missing.
    pub forks: u64,
    /// Bytes read from `pages.img` by the loader.
    pub read_bytes: u64,
    /// Time spent reading and verifying chunks of `pages.img`.
    pub read_time: Duration,
    /// Time spent in `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`.
    pub fill_time: Duration,
    /// Of `read_time`, before the working set was in.
    pub prefetch_read_time: Duration,
    /// Of `fill_time`, before the working set was in.
    pub prefetch_fill_time: Duration,
    /// Bytes of `working-set.img` read and checked (on a thread of its own
    /// while the restore went on) for the working set and the pages filled
    /// up front; none were read from `pages.img`.
    pub prefetched_file_bytes: u64,
    /// How long reading and checking `working-set.img` took.
    pub prefetched_file_time: Duration,
    /// From the loader's start to its end.
    pub elapsed: Duration,
    /// The recorded working set, when recording ended with the process
    /// (not by [`Loader::finish_recording`]).
    pub working_set: Option<WorkingSet>,
}

/// A one-shot flag threads can wait for.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    pub(crate) fn set(&self) {
        *self.set.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut g = self.set.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A request to the loader's thread.
pub(crate) enum Command {
    FinishRecording(mpsc::Sender<Result<WorkingSet, RestoreError>>),
    StartBackground,
    Suspend,
}

/// Between a [`Loader`] handle and its thread.
#[derive(Debug)]
pub(crate) struct Control {
    /// An eventfd the thread polls: written when a command is queued.
    wake: OwnedFd,
    commands: Mutex<Vec<CommandSlot>>,
    pub(crate) prefetched: Latch,
    pub(crate) finished: AtomicBool,
}

/// [`Command`] with a Debug for [`Control`].
pub(crate) struct CommandSlot(Command);

impl std::fmt::Debug for CommandSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Command::FinishRecording(_) => "FinishRecording",
            Command::StartBackground => "StartBackground",
            Command::Suspend => "Suspend",
        })
    }
}

impl Control {
    fn new() -> Result<Control, RestoreError> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(RestoreError::Io {
                what: "creating the loader's eventfd",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Control {
            // SAFETY: the kernel returned a new fd that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            commands: Mutex::new(Vec::new()),
            prefetched: Latch::default(),
            finished: AtomicBool::new(false),
        })
    }

    /// Queues a command for the loop; `false` (the command dropped, so a
    /// reply channel in it closes) once the loop has ended.
    fn send(&self, c: Command) -> bool {
        let mut q = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        if self.finished.load(Ordering::Acquire) {
            return false;
        }
        q.push(CommandSlot(c));
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a local buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        true
    }

    /// The loop has ended: no command is taken any more, and those queued
    /// are dropped (closing their reply channels).
    pub(crate) fn close(&self) {
        let mut q = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        self.finished.store(true, Ordering::Release);
        q.clear();
    }

    pub(crate) fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|c| c.0)
            .collect()
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub(crate) fn clear_wake(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from our eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }
}

/// The thread that loads a lazily restored process's memory. Dropping it
/// (or [`Loader::wait`]) waits until everything is loaded, the process is
/// gone, or loading failed (and the process was killed); dropping it ends
/// a recording first.
#[derive(Debug)]
pub struct Loader {
    thread: Option<std::thread::JoinHandle<Exit>>,
    control: Arc<Control>,
}

impl std::fmt::Debug for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Exit::Suspended(_) => f.write_str("Suspended"),
        }
    }
}

impl Loader {
    fn spawn(job: Box<Job>) -> Result<Loader, RestoreError> {
        let control = Arc::clone(&job.control);
        let thread = std::thread::Builder::new()
            .name("sprout-loader".into())
            .spawn(move || job.run())
            .map_err(|source| RestoreError::Io {
                what: "starting the loader thread",
                source,
            })?;
        Ok(Loader {
            thread: Some(thread),
            control,
        })
    }

    /// Whether loading has ended (everything loaded, the process gone, or
    /// a failure: [`Loader::wait`] tells).
    pub fn is_finished(&self) -> bool {
        self.control.finished.load(Ordering::Acquire)
    }

    /// Waits until the working set is loaded (or the loader ended).
    pub(crate) fn wait_prefetched(&self) {
        self.control.prefetched.wait();
    }

    /// Ends a recording ([`MemoryLoading::Record`]): returns the pages
    /// touched so far, as a working set of this image, and loads the rest
    /// in the background. [`RestoreError::NotRecording`] if this loader
    /// does not record (or its recording ended with the process).
    pub fn finish_recording(&self) -> Result<WorkingSet, RestoreError> {
        self.remote().finish_recording()
    }

    /// Starts the background pass now, if it is still in its head start (a
    /// short wait after the working set, which gives the process's first
    /// request the CPUs and the disk). [`Loader::wait`] and dropping start
    /// it too.
    pub fn start_background(&self) {
        self.control.send(Command::StartBackground);
    }

    /// A handle for other threads: [`LoaderRemote::finish_recording`],
    /// [`LoaderRemote::is_finished`].
    pub fn remote(&self) -> LoaderRemote {
        LoaderRemote(Arc::clone(&self.control))
    }

    fn join(&mut self) -> Option<Exit> {
        let t = self.thread.take()?;
        match t.join() {
            Ok(exit) => Some(exit),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Waits until loading has ended; what it did, or why it failed. A
    /// recording ends with the process, or with
    /// [`finish_recording`](Loader::finish_recording) from another thread
    /// ([`Loader::remote`]).
    pub fn wait(mut self) -> Result<LoadReport, RestoreError> {
        self.start_background();
        match self.join() {
            Some(Exit::Done(r)) => *r,
            Some(Exit::Suspended(_)) | None => Err(RestoreError::NotRecording),
        }
    }

    /// Stops the loader's thread between two turns and hands over what it
    /// owns (the userfaultfds, the image, its progress), to go on in
    /// another thread or in a child process forked from this one
    /// ([`SuspendedLoader::resume`]). `Ok(None)` if loading had already
    /// ended successfully.
    pub fn suspend(mut self) -> Result<Option<SuspendedLoader>, RestoreError> {
        // Refused only once the loop has ended: the join tells how.
        self.control.send(Command::Suspend);
        match self.join() {
            Some(Exit::Suspended(mut job)) => {
                // A fork does not inherit working-set.img's copy (and
                // the working set is in by now anyway).
                job.source.drop_prefetched();
                Ok(Some(SuspendedLoader(job)))
            }
            Some(Exit::Done(r)) => r.map(|_| None),
            None => Ok(None),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if self.thread.is_some() && !self.is_finished() {
            // A recording would wait for the process to exit: end it (its
            // working set unused) and load the rest, without a head start.
            self.start_background();
            let _ = self.finish_recording();
        }
        if let Some(Exit::Suspended(job)) = self.join() {
            // Dropped while suspended (a suspend raced the end): finish.
            drop(job.run());
        }
    }
}

/// What other threads may ask of a [`Loader`] while one of them owns it.
#[derive(Debug, Clone)]
pub struct LoaderRemote(Arc<Control>);

impl LoaderRemote {
    /// [`Loader::finish_recording`].
    pub fn finish_recording(&self) -> Result<WorkingSet, RestoreError> {
        if self.is_finished() {
            return Err(RestoreError::NotRecording);
        }
        let (tx, rx) = mpsc::channel();
        if !self.0.send(Command::FinishRecording(tx)) {
            return Err(RestoreError::NotRecording);
        }
        rx.recv().unwrap_or(Err(RestoreError::NotRecording))
    }

    /// [`Loader::is_finished`].
    pub fn is_finished(&self) -> bool {
        self.0.finished.load(Ordering::Acquire)
    }
}

/// A loader stopped between turns ([`Loader::suspend`]).
#[derive(Debug)]
pub struct SuspendedLoader(Box<Job>);

impl SuspendedLoader {
    /// Starts a loader thread again, in this process, from where it
    /// stopped. The process may be a child forked after the suspend (the
    /// fds are the same numbers there).
    pub fn resume(self) -> Result<Loader, RestoreError> {
        Loader::spawn(self.0)
    }

    /// The file descriptors it owns: what a child forked to carry it on
    /// must keep open.
    pub fn fds(&self) -> Vec<RawFd> {
        let j = &self.0;
        let mut fds = vec![j.control.wake_fd(), j.source.pages_fd(), j.source.dir_fd()];
        fds.extend(j.pidfd.as_ref().map(|f| f.as_raw_fd()));
        fds.extend(j.spaces.iter().map(|s| s.uffd.fd().as_raw_fd()));
        fds
    }
}

/// The restorer's side of a lazy restore: the userfaultfd taken from the
/// process, the ranges registered, the loader started.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) loader: Loader,
    /// Stored pages left to the loader.
    pub(crate) lazy_pages: u64,
    /// Of those, pages of the working set (loaded before the process
    /// runs).
    pub(crate) working_set_pages: u64,
}

/// What a restore readies for the process's memory as soon as the image
/// is open, so that on a cold image the reads overlap the sandbox's
/// preparation.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// `working-set.img`, being read and checked.
    pages: Option<PendingPages>,
}

impl Prepared {
    /// Whether `working-set.img` is being read.
    pub(crate) fn has_pages(&self) -> bool {
        self.pages.is_some()
    }

    /// Waits for `working-set.img` (if it is read): its pages, checked, or
    /// why it was refused.
    pub(crate) fn take_pages(&mut self) -> Result<Option<Arc<PrefetchedPages>>, RestoreError> {
        match self.pages.take() {
            Some(p) => Ok(Some(Arc::new(p.wait()?))),
            None => Ok(None),
        }
    }
}

/// Readies the process's memory as soon as the image is open (`loading`
/// resolved): for a lazy restore whose working set has a pages file, opens
/// `working-set.img` (refusing a missing, misplaced or truncated one) and
/// starts reading and checking it on a thread; without one, starts the
/// kernel reading the parts of `pages.img` the restore reads before the
/// process runs: all of it for an eager restore; for a lazy one what is
/// filled up front (private file mappings, locked memory) and the working
/// set's pages.
pub(crate) fn prepare(image: &Image, loading: &MemoryLoading) -> Result<Prepared, RestoreError> {
    let index = match loading {
        MemoryLoading::Lazy {
            working_set: Some(ws),
        } => ws.pages_file(),
        _ => None,
    };
    let pages = match index {
        Some(index) => Some(index.open(image)?.read_in_background()),
        None => {
            read_ahead(image, loading);
            None
        }
    };
    Ok(Prepared { pages })
}

/// See [`prepare`]: what a restore without `working-set.img` reads of
/// `pages.img` before the process runs.
fn read_ahead(image: &Image, loading: &MemoryLoading) {
    let m = image.manifest();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    match loading {
        MemoryLoading::Eager => spans.push((0, m.pages.size)),
        MemoryLoading::Lazy { .. } | MemoryLoading::Record => {
            for v in &m.vmas {
                let lazy = is_lazy(v);
                for r in &v.pages {
                    if !lazy {
                        spans.push((r.offset, r.offset + r.len()));
                    }
                }
            }
            for o in &m.shared_memory {
                spans.extend(o.pages.iter().map(|r| (r.offset, r.offset + r.len())));
            }
            if let MemoryLoading::Lazy {
                working_set: Some(ws),
            } = loading
            {
                for r in ws.ranges() {
                    spans.extend(stored_spans(m, r.start, r.end()));
                }
            }
        }
        MemoryLoading::LazyWithImageWorkingSet => {}
    }
    spans.sort_unstable();
    source::read_ahead(image, spans);
}

/// `pages.img` byte ranges of the stored pages in `[start, end)`.
fn stored_spans(
    m: &crate::image::ManifestBody,
    start: u64,
    end: u64,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    let first = m.vmas.partition_point(|v| v.end <= start);
    m.vmas[first..]
        .iter()
        .take_while(move |v| v.start < end)
        .flat_map(move |v| {
            v.pages.iter().filter_map(move |r| {
                let (a, b) = (r.addr(v.start), r.addr(v.start) + r.len());
                let (s, e) = (a.max(start), b.min(end));
                (s < e).then(|| (r.offset + (s - a), r.offset + (e - a)))
            })
        })
}

/// Takes the userfaultfd `target_fd` of process `pid`, registers the lazy
/// ranges of `image` with it and starts the loader, the working set's
/// pages from `prefetched` (`working-set.img`, checked) if it holds them.
/// The caller closes `target_fd` in the process.
pub(crate) fn start(
    image: &Arc<Image>,
    pid: Tid,
    target_fd: i32,
    loading: &MemoryLoading,
    prefetched: Option<Arc<PrefetchedPages>>,
) -> Result<Started, RestoreError> {
    let sys = |what: &'static str| {
        move |e: crate::ptrace::PtraceError| RestoreError::Io {
            what,
            source: std::io::Error::other(e.to_string()),
        }
    };
    let pidfd = mem::pidfd_open(pid).map_err(sys("pidfd_open of the restored process"))?;
    let fd = mem::pidfd_getfd(&pidfd, target_fd).map_err(sys("taking its userfaultfd"))?;
    let uffd = uffd::Uffd::new(fd);
    uffd.api(FEATURES).map_err(|source| RestoreError::Io {
        what: "UFFDIO_API on the restored process's userfaultfd",
        source,
    })?;
    let index = Arc::new(PageIndex::new(image.manifest()));
    for &(s, e) in index.ranges() {
        uffd.register(s, e - s).map_err(|source| RestoreError::Io {
            what: "registering anonymous memory with userfaultfd",
            source,
        })?;
    }
    let (mode, plan) = match loading {
        MemoryLoading::Record => (Mode::Record(Vec::new()), Plan::default()),
        MemoryLoading::Lazy { working_set } => (
            Mode::Prefetch,
            working_set
                .as_ref()
                .map(|ws| {
                    Plan::new(&index, ws, |off| {
                        prefetched.as_ref().is_none_or(|p| p.covers(off, PAGE))
                    })
                })
                .unwrap_or_default(),
        ),
        MemoryLoading::Eager | MemoryLoading::LazyWithImageWorkingSet => {
            unreachable!("resolved before the restore starts a loader")
        }
    };
    let working_set_pages = plan.stored.iter().map(|&(_, c)| c as u64).sum();
    let report = LoadReport {
        prefetched_file_bytes: prefetched.as_ref().map_or(0, |p| p.len()),
        prefetched_file_time: prefetched
            .as_ref()
            .map_or(Duration::ZERO, |p| p.read_time()),
        ..LoadReport::default()
    };
    let source = source::Source::new(Arc::clone(image), prefetched);
    let space = pages::Space {
        uffd,
        layout: pages::Layout::identity(index.ranges()),
        pending: pages::PageSet::full(index.page_count()),
        deferred: Vec::new(),
        cursor: 0,
        main: true,
        gone: false,
    };
    let lazy_pages = index.page_count() as u64;
    let control = Arc::new(Control::new()?);
    if matches!(mode, Mode::Record(_)) {
        // Nothing goes first: the process may run at once.
        control.prefetched.set();
    }
    let job = Box::new(Job {
        index,
        source,
        spaces: vec![space],
        pidfd: Some(pidfd),
        control,
        mode,
        plan,
        plan_at: (0, 0),
        head_start: if working_set_pages > 0 {
            server::BACKGROUND_HEAD_START
        } else {
            Duration::ZERO
        },
        background_from: Instant::now(),
        report,
        started: Instant::now(),
        buf: Vec::new(),
    });
    Ok(Started {
        loader: Loader::spawn(job)?,
        lazy_pages,
        working_set_pages,
    })
}
