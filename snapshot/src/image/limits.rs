//! Fixed names, sizes and bounds of the image format.
//!
//! Every bound here is checked when a manifest is parsed, before anything
//! else uses it; a value over a bound is refused with
//! [`ImageError::Limit`](super::ImageError::Limit) naming it. The bounds are
//! far above what a function's process needs and low enough that a hostile
//! image cannot make the reader allocate or loop without end: the manifest's
//! own size caps the memory its parse takes (a few times
//! [`MAX_MANIFEST_BYTES`] at worst), the counts cap the validation work.

/// The `format` field of every manifest.
pub const FORMAT: &str = "sprout-image";
/// The one manifest version this crate reads and writes.
pub const VERSION: u32 = 1;
/// File name of the manifest inside the image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the pages file inside the image directory. Fixed: the
/// manifest names it too, but a reader never takes a file name from it.
pub const PAGES_FILE: &str = "pages.img";

/// Page size of the format (x86_64). Every address, length and pages-file
/// offset is a multiple of it.
pub const PAGE_SIZE: u64 = 4096;
/// End of the x86_64 user address space with 4-level paging
/// (`TASK_SIZE_MAX`: 2^47 minus one guard page). No VMA ends above it and no
/// recorded user address (registers, mm fields, rseq, robust list) lies at or
/// above it. Images of processes that opted into 5-level addresses (hint
/// above 2^47) are refused.
pub const TASK_SIZE_MAX: u64 = 0x7fff_ffff_f000;
/// Lowest address an image may map. The restoring host's own
/// `vm.mmap_min_addr` (usually 65536) is checked against the image by
/// [`Image::check_host`](super::Image::check_host).
pub const MIN_MAP_ADDR: u64 = PAGE_SIZE;

/// Largest `manifest.json`, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Most VMAs: the default `vm.max_map_count`.
pub const MAX_VMAS: usize = 65530;
/// Most threads in the one process of an image.
pub const MAX_THREADS: usize = 16384;
/// Most file descriptor records.
pub const MAX_FDS: usize = 65536;
/// Fd numbers are below this (`fs.nr_open`'s largest default, 2^20).
pub const MAX_FD_NUMBER: i32 = 1 << 20;
/// Most mapped-file records (each is mapped by at least one VMA).
pub const MAX_FILES: usize = MAX_VMAS;
/// Most shared-memory objects.
pub const MAX_SHARED_OBJECTS: usize = 4096;
/// Longest path, in bytes: `PATH_MAX` (4096) less the terminating NUL.
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest `AF_UNIX` socket path, in bytes (`sun_path` less its NUL).
pub const MAX_UNIX_PATH_BYTES: usize = 107;
/// Longest short string (kernel release, CPU vendor, producer, memfd name).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest thread name (`TASK_COMM_LEN` less the NUL).
pub const MAX_COMM_BYTES: usize = 15;
/// Largest pages file, in bytes.
pub const MAX_PAGES_FILE_BYTES: u64 = 256 << 30;
/// Largest file a process may map for a checkpoint: each mapped file is
/// hashed whole (a sparse file of exabytes costs its process nothing).
pub const MAX_MAPPED_FILE_BYTES: u64 = 64 << 30;
/// Smallest chunk of the pages file.
pub const MIN_CHUNK_BYTES: u64 = 64 << 10;
/// Largest chunk of the pages file.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Chunk size the writer uses unless told otherwise: a chunk and its hash
/// stay in the L2 cache while being verified.
pub const DEFAULT_CHUNK_BYTES: u64 = 256 << 10;
/// Most chunks (so most chunk checksums in the manifest).
pub const MAX_CHUNKS: usize = 1 << 20;
/// Most page runs over all VMAs and shared objects.
pub const MAX_PAGE_RUNS: usize = 1 << 21;
/// Most supplementary groups (`NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;
/// Most pending signals in one queue (a thread's or the process's).
pub const MAX_PENDING_SIGNALS: usize = 4096;
/// Most POSIX timers.
pub const MAX_POSIX_TIMERS: usize = 4096;
/// Most registrations in one epoll set.
pub const MAX_EPOLL_TARGETS: usize = 65536;
/// Most bytes queued in one pipe or socket end.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Most messages queued in one socket end.
pub const MAX_QUEUED_MESSAGES: usize = 65536;
/// Smallest xsave area: the 512-byte legacy area plus the 64-byte header.
pub const MIN_XSAVE_BYTES: u32 = 576;
/// Largest xsave area accepted (AMX tile data makes it about 11 KiB).
pub const MAX_XSAVE_BYTES: u32 = 64 << 10;
/// Most words of the saved auxiliary vector (the kernel keeps 52 on x86_64).
pub const MAX_AUXV_WORDS: usize = 64;
/// Size of a raw `siginfo_t`.
pub const SIGINFO_BYTES: usize = 128;
/// Highest signal number.
pub const MAX_SIGNAL: u8 = 64;
/// Longest ELF build-id, in bytes.
pub const MAX_BUILD_ID_BYTES: usize = 64;
