//! The on-disk image format: types, writer, reader, validation, `verify`.
//!
//! # Layout
//!
//! An image is a **directory**, mode 0700, owned by root or the user that
//! restores it, holding two files and an optional working set:
//!
//! | file | contents |
//! |---|---|
//! | `manifest.json` | everything but page contents, as JSON (below) |
//! | `pages.img` | page data: whole 4096-byte pages, back to back, every offset page aligned, checksummed in chunks |
//! | `working-set.json` | optional: the pages a restored process touched first ([`WorkingSet`], [`working_set`]), written by a recording restore, loaded first by lazy ones; versioned and checksummed like the manifest, bound to it by its digest, and (version 2) the index of `working-set.img` |
//! | `working-set.img` | optional, with `working-set.json` version 2: copies of the `pages.img` pages a lazy restore with that working set loads before the process runs, back to back, checksummed in chunks ([`WorkingSetPages`], [`working_set_pages`]), so that a cold restore reads them in one sequential read |
//!
//! The image is valid and restores (eagerly, or lazily without a working
//! set) whatever the working-set files hold; a lazy restore with the
//! working set refuses a broken `working-set.json` or `working-set.img`
//! before the process runs. [`WorkingSet::save`] writes both (the old
//! `working-set.json` removed first, so that a crash leaves the old pair,
//! none, or the new pair); [`evict_page_cache`] and [`verify`] cover them.
//!
//! An image is untrusted input (images are copied between nodes and
//! imported by containerd). [`Image::open`] refuses a directory that others
//! can access or that belongs to someone else, then reads the manifest (at
//! most [`limits::MAX_MANIFEST_BYTES`]), checks its version and checksum,
//! parses it strictly (unknown fields are errors) and validates every rule
//! below, and checks that `pages.img` has exactly the recorded size, all
//! before anything uses the manifest. [`Image::verify_pages`] checks the
//! page chunks; [`Image::check_host`] the host; [`WorkingSet::load`] the
//! working set (and the size of its `working-set.img`, whose chunks a
//! lazy restore checks as it reads them). Every path the restorer
//! opens is resolved inside the container's rootfs with [`open_in_root`]
//! and mapped files are compared by content with [`file_matches`].
//!
//! # `manifest.json`
//!
//! ```json
//! {"format":"sprout-image","version":1,"checksum":"sha256:<64 hex>","body":{…}}
//! ```
//!
//! - `format`: always `"sprout-image"` ([`limits::FORMAT`]);
//! - `version`: 1 ([`limits::VERSION`]). A reader looks at `format` and
//!   `version` alone first, so a newer image is refused as
//!   [`ImageError::UnsupportedVersion`], not as malformed. Any change to the
//!   body's shape or meaning bumps the version;
//! - `checksum`: SHA-256 of the body's bytes **exactly as stored** (the
//!   reader hashes the raw JSON text of `body`, it does not re-serialize).
//!   It detects corruption and truncation; it is not a signature (anyone who
//!   can write the image can recompute it), which is why every field is
//!   validated as well;
//! - `body`: a [`ManifestBody`].
//!
//! Spelling ([`encoding`]): addresses, register values, masks and CPUID
//! words are hex strings (`"0x7ffd5e8c1000"`), since JSON numbers above 2^53
//! are rounded by common JSON tools; counts, sizes and pages-file offsets
//! are numbers; byte strings (xsave areas, siginfo, queued data) are
//! base64; digests are lowercase hex; rlimits use `"unlimited"`.
//!
//! ## The body, field by field
//!
//! - `producer` (string): who wrote the image. Informational.
//! - `host` ([`Host`]): what the restoring host must match.
//!   - `kernel_release`: `uname -r`, must be equal;
//!   - `page_size`: 4096;
//!   - `mmap_min_addr`: informational; the restoring host's value must not
//!     exceed the image's lowest address;
//!   - `cpu` ([`Cpu`]): `vendor` (equal); feature words `leaf1_ecx`,
//!     `leaf1_edx`, `leaf7_ebx`, `leaf7_ecx`, `leaf7_edx`, `ext1_ecx`,
//!     `ext1_edx`, `xcr0_supported`, `xsave_features` (each a subset of the
//!     host's); `xcr0`, `xsave_size` and `xstate_regset_size` (equal);
//!     `xsave_size_max` (informational);
//!   - `vdso` ([`Vdso`], or `null` if the kernel maps none): `sha256` of the
//!     `[vdso]` bytes (equal), `build_id` (informational), `areas`:
//!     `[vvar]`, `[vvar_vclock]`, `[vdso]` as `{kind, offset, size}` in
//!     address order, offsets relative to the first (equal).
//! - `process` ([`Process`]): `pid` (= first thread's tid), `personality`,
//!   `umask`, `cwd` and `exe` (rootfs paths), `credentials` (uid/gid sets,
//!   `groups`, capability sets, `securebits`, `no_new_privs`), `rlimits`
//!   (`{resource, soft, hard}`, each resource once, soft ≤ hard), `mm`
//!   ([`MmFields`]: the `prctl_mm_map` addresses, each in
//!   `[4096, TASK_SIZE_MAX)` and ordered as the kernel requires, and `auxv`
//!   as word pairs ending in `AT_NULL`, whose `AT_SYSINFO_EHDR` is the
//!   `[vdso]` VMA's start), `sigactions` (`{signal, handler, flags,
//!   restorer, mask}`, signals 1..=64 except SIGKILL/SIGSTOP, each once),
//!   `pending` (shared queue: `{signo, siginfo}` with the raw 128-byte
//!   `siginfo_t`), `posix_timers` (`{id, clock, notify, signo, sigval,
//!   interval_ns, value_ns, overrun}`; a `thread` notify names a tid of the
//!   image), `itimers` (`real`, `virtual`, `prof`: `{interval_ns,
//!   value_ns}`), `time_offsets` (`{monotonic_ns, boottime_ns}` of its time
//!   namespace, or `null`).
//! - `threads` ([`Thread`], at least one, the leader first, tids unique):
//!   `tid`, `comm`, `regs` ([`UserRegs`]: every `user_regs_struct` field by
//!   name, `cs` = 0x33, `ss` = 0x2b, `rip`/`fs_base`/`gs_base` user
//!   addresses), `xsave` (the `NT_X86_XSTATE` regset, base64, exactly
//!   `host.cpu.xstate_regset_size` bytes, header valid for the kernel),
//!   `sigmask`, `pending` (private queue), `sigaltstack` (`{sp, size,
//!   flags}` or `null`), `rseq` (`{ptr, len, sig}` or `null`),
//!   `robust_list` (`{head, len}` or `null`), `clear_child_tid`, and
//!   `syscall` ([`SyscallRestart`]: `{"state":"none"}`,
//!   `{"state":"restart","nr":N,"code":C}` with `rax = nr` and `rip` on
//!   the `syscall` instruction (`C`, the -ERESTART* code found, is
//!   optional: with it the restorer installs the registers as the kernel
//!   left them, `rax = C`, `orig_rax = nr`, `rip + 2`, so a signal that
//!   comes first is handled as the kernel would; without it, the call
//!   re-executes), or `{"state":"eintr","nr":N}` with `rax = -EINTR`;
//!   `orig_rax` = `nr` in both; otherwise the restorer installs
//!   `orig_rax = -1`).
//! - `vmas` ([`Vma`], sorted, non-overlapping, page aligned, inside
//!   `[4096, 0x7fff_ffff_f000)`): `start`, `end`, `prot` (`"r-x"`), `shared`,
//!   `flags` (smaps `VmFlags` the restorer replays: `gd lo nr dp sr rr dc dd
//!   mg hg nh wf`; anything else is refused), `backing` ([`Backing`]:
//!   `anonymous`, `file` `{file, offset}`, `heap`, `stack`, `vdso`, `vvar`,
//!   `vvar_vclock`, `shared_memory` `{object, offset}`; heap, stack and each
//!   vDSO kind at most once, the vDSO family laid out as `host.vdso.areas`
//!   or absent),
//!   `pages` ([`PageRun`] `{page, count, offset}`: page index within the
//!   VMA, page count ≥ 1, byte offset in `pages.img`; sorted, not
//!   overlapping, inside the VMA and inside `pages.img`), `guard_pages`
//!   ([`PageSpan`] `{page, count}`: `MADV_GUARD_INSTALL` markers to
//!   re-install; inside the VMA, disjoint from `pages`). Pages are stored
//!   only for private anonymous, heap, stack and private file mappings
//!   (their written pages; the rest comes from the file), never for vDSO,
//!   shared, `dp` or `wf` VMAs.
//! - `files` ([`FileRecord`]): each mapped file once: `path` (absolute,
//!   normalized, in the rootfs), `size`, `sha256` of the contents, `build_id`
//!   (informational). Identity by content, not inode: a rootfs whose library
//!   changed is refused.
//! - `shared_memory` ([`SharedObject`]): `MAP_SHARED` anonymous/shmem/memfd
//!   objects, `{size, name, pages}`; VMAs reference them by index (several
//!   may map one object). Templates refuse images that have any.
//! - `fds` ([`Fd`], sorted by number, unique, below 2^20): `fd`, `cloexec`,
//!   `flags` (status flags and access mode), `object` ([`FdObject`], tagged
//!   by `type`): `stdio` `{stream}` and `tty` (re-bound to the new
//!   sandbox's), `dup` `{of}` (same open file description as another fd),
//!   `file` `{path, offset}`, `device` `{device: null|zero|full|random|urandom}`,
//!   `pipe` `{pipe, end, capacity, data}` (ends share the `pipe` id; queued
//!   bytes on at most one end), `eventfd` `{count, semaphore}`, `epoll`
//!   `{targets: [{tfd, events, data}]}` (each `tfd` another fd of the image,
//!   once), `timerfd` `{clock, settime_flags, ticks, interval_ns,
//!   value_ns}`, `signalfd` `{mask}`, `socket` ([`Socket`]: `family`,
//!   `socket_type`, `protocol`, `state` (`unbound`, `bound`, `listening`
//!   `{backlog}`, `pair` `{pair, queued}`), `local` (`inet` `{addr}`,
//!   `unix_path` `{path}`, `unix_abstract` `{name}`), `options`).
//! - `pages` ([`PagesIndex`]): `file` (`"pages.img"`), `size` (exact file
//!   size, page multiple), `chunk_size` (power of two, 64 KiB..=64 MiB;
//!   default 256 KiB), `hash` (`"xxh3-64"`), `chunks` (one 16-hex-digit hash
//!   per chunk; the last chunk may be short).
//!
//! # `pages.img`
//!
//! Raw page data in the order the writer appended it; nothing else (no
//! header, no padding between runs). Each [`PageRun`] names where its pages
//! are. It is checked in chunks of `chunk_size` bytes with XXH3-64 — fast
//! enough to verify tens of MiB in a few milliseconds before a restore, and
//! per chunk so a lazy restorer can check just what it loads
//! ([`Image::verify_chunks`]); the list of chunk hashes is itself covered by
//! the manifest's SHA-256. Anonymous memory is filled *from* this file into
//! anonymous mappings; it is never mapped `MAP_PRIVATE` (restore-pitfalls
//! §0.1).
//!
//! Thread xsave areas are stored in the manifest (base64), not here: they
//! are small (≈2.7 KiB with AVX-512), belong to their thread record, are
//! validated with it when the manifest is parsed, and keep `pages.img` pure
//! page data without per-thread padding to page boundaries.
//!
//! Chunks are checked with `pread` into a chunk-sized buffer, split over
//! the CPUs, rather than through a mapping of the file: a file truncated
//! under a mapping raises SIGBUS in the reader (`sproutd`, which holds every
//! template), `pread` returns an error. On this machine 48 MiB hash in
//! 2.7 ms (XXH3 alone) and read and hash in 6–8 ms on one core.
//!
//! # `working-set.img`
//!
//! Exactly the bytes of the `pages.img` ranges its index lists (`extents`:
//! `{offset, pages}`, sorted, not overlapping), in that order: the stored
//! pages of the working set's ranges and those a lazy restore fills before
//! the process runs anyway (private file mappings, locked and shared
//! memory). Chunked (64 KiB) and hashed (XXH3-64) like `pages.img`, the
//! hashes in `working-set.json`. See [`working_set_pages`].
//!
//! # Cold images
//!
//! [`evict_page_cache`] drops an image's files from the page cache and
//! [`resident_fraction`] (`mincore`) tells how much of `pages.img` is
//! cached: how tests and benches make and prove a cold start.
//!
//! # Limits
//!
//! Every count and size has a bound in [`limits`], checked before use;
//! every offset and length is checked for overflow and for lying inside the
//! pages file.
//!
//! # Fuzzing
//!
//! `snapshot/fuzz` holds two `cargo fuzz` targets: `manifest` (raw
//! `manifest.json` bytes) and `manifest_body` (a body wrapped in an envelope
//! with its correct checksum, so mutations reach serde and the validator).
//! Both assert that whatever parses re-encodes and parses back unchanged.
//! With the stable toolchain, from `snapshot/`:
//!
//! ```text
//! cargo install cargo-fuzz
//! RUSTC_BOOTSTRAP=1 cargo fuzz build
//! mkdir -p fuzz/corpus/manifest_body
//! RUSTC_BOOTSTRAP=1 cargo fuzz run manifest_body fuzz/corpus/manifest_body fuzz/seeds/manifest_body -- \
//!     -dict=fuzz/manifest.dict -max_total_time=300
//! ```
//!
//! The seeds are the test suite's sample image (`SPROUT_FUZZ_SEEDS=DIR
//! cargo test -p sprout-snapshot --test image round_trip` rewrites them).
//! The same properties run on every `cargo test` as seeded random mutations
//! (`tests/image/mutations.rs`).

pub(crate) mod arena;
pub mod encoding;
mod envelope;
mod error;
mod fds;
mod host;
pub mod limits;
mod manifest;
mod memory;
mod page_cache;
mod process;
mod reader;
mod rootfs;
mod thread;
mod validate;
mod verify;
pub mod working_set;
pub mod working_set_pages;
mod writer;

pub use encoding::{ChunkHash, HexBytes, Sha256Digest};
pub use error::{ImageError, Result};
pub use fds::{
    CharDevice, EpollTarget, Fd, FdObject, PipeEnd, SockAddr, Socket, SocketFamily, SocketOptions,
    SocketState, SocketType, StdStream,
};
pub use host::{Cpu, Host, Vdso, VdsoArea, VdsoAreaKind};
pub use manifest::{ChunkHashKind, ManifestBody, PagesIndex, encode_manifest, parse_manifest};
pub use memory::{Backing, FileRecord, PageRun, PageSpan, Prot, SharedObject, VmFlag, Vma};
pub use page_cache::{evict_page_cache, file_resident_fraction, resident_fraction};
pub use process::{
    CapSets, Credentials, ITimer, ITimers, IdSet, MmFields, PendingSignal, PosixTimer, Process,
    Rlimit, RlimitResource, SigAction, TimeOffsets, TimerNotify,
};
pub use reader::Image;
pub use rootfs::{
    LayerDevices, file_matches, file_matches_on, file_record, on_overlay, open_in_root,
    set_hash_cache_dir,
};
pub use thread::{
    RobustList, Rseq, SigAltStack, SyscallRestart, Thread, USER_CS, USER_SS, UserRegs,
};
pub use verify::{VerifyReport, WorkingSetSummary, verify};
pub use working_set::{PageRange, WorkingSet};
pub use working_set_pages::{Extent, WorkingSetPages};
pub use writer::{ImageWriter, PageRef};
