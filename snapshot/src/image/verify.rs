//! [`verify`]: the offline check behind `sprout image verify DIR`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::Result;
use super::host::Host;
use super::reader::Image;
use super::working_set::WorkingSet;
use super::working_set_pages::matches_pages_file;

/// What [`verify`] found. The manifest was readable and valid and
/// `pages.img` had the recorded size (else `verify` returned the error);
/// the page contents and the host are judged separately, since an image can
/// be intact yet foreign to this host.
#[derive(Debug)]
pub struct VerifyReport {
    /// The image directory.
    pub dir: PathBuf,
    /// `producer` of the manifest.
    pub producer: String,
    /// Kernel release the image was taken on.
    pub kernel_release: String,
    /// CPU vendor the image was taken on.
    pub cpu_vendor: String,
    /// Size of `manifest.json`.
    pub manifest_bytes: u64,
    /// Number of threads.
    pub threads: usize,
    /// Number of VMAs.
    pub vmas: usize,
    /// Number of mapped-file records.
    pub files: usize,
    /// Number of shared-memory objects.
    pub shared_objects: usize,
    /// Number of fds.
    pub fds: usize,
    /// Number of page runs.
    pub page_runs: usize,
    /// Bytes of page data referenced by page runs.
    pub stored_bytes: u64,
    /// Size of `pages.img`.
    pub pages_bytes: u64,
    /// Number of chunks.
    pub chunks: usize,
    /// Chunk size.
    pub chunk_size: u64,
    /// Whether every chunk of `pages.img` matches its checksum.
    pub pages: Result<()>,
    /// Whether this host can restore the image.
    pub host: Result<()>,
    /// `working-set.json` (and its `working-set.img`), if the image has
    /// one, or why it is refused.
    pub working_set: Result<Option<WorkingSetSummary>>,
}

/// What [`verify`] found of an image's working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingSetSummary {
    /// Number of ranges.
    pub ranges: usize,
    /// Number of pages.
    pub pages: u64,
    /// Size of `working-set.img` (every chunk matched its hash and every
    /// extent the bytes of `pages.img`), if the working set has one.
    pub file_bytes: Option<u64>,
}

impl VerifyReport {
    /// Manifest, pages and working set (if any) are intact (the host may
    /// still be foreign).
    pub fn intact(&self) -> bool {
        self.pages.is_ok() && self.working_set.is_ok()
    }

    /// Intact and restorable on this host.
    pub fn ok(&self) -> bool {
        self.intact() && self.host.is_ok()
    }
}

fn status(r: &Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("FAILED: {e}"),
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "image:    {}", self.dir.display())?;
        writeln!(
            f,
            "manifest: ok ({} bytes, by {:?})",
            self.manifest_bytes, self.producer
        )?;
        writeln!(f, "pages:    {}", status(&self.pages))?;
        writeln!(
            f,
            "host:     {} (image from {} on {})",
            status(&self.host),
            self.kernel_release,
            self.cpu_vendor
        )?;
        match &self.working_set {
            Ok(None) => writeln!(f, "working set: none")?,
            Ok(Some(w)) => {
                write!(
                    f,
                    "working set: ok ({} pages in {} ranges",
                    w.pages, w.ranges
                )?;
                match w.file_bytes {
                    Some(b) => writeln!(f, "; working-set.img: {b} bytes)")?,
                    None => writeln!(f, "; no working-set.img)")?,
                }
            }
            Err(e) => writeln!(f, "working set: FAILED: {e}")?,
        }
        writeln!(
            f,
            "contents: {} threads, {} vmas, {} files, {} shared objects, {} fds",
            self.threads, self.vmas, self.files, self.shared_objects, self.fds
        )?;
        write!(
            f,
            "pages.img: {} bytes in {} chunks of {} bytes; {} page runs referencing {} bytes",
            self.pages_bytes, self.chunks, self.chunk_size, self.page_runs, self.stored_bytes
        )
    }
}

/// Checks the image in `dir` offline: opens and validates it
/// ([`Image::open`]; its error is returned as is), then checks every page
/// chunk, its working set if it has one (with its `working-set.img`: every
/// chunk, and every extent against `pages.img`), and this host's
/// compatibility, reporting each separately.
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let image = Image::open(dir.as_ref())?;
    let pages = image.verify_pages();
    let host = Host::current().and_then(|h| image.check_host(&h));
    let working_set = check_working_set(&image);
    let b = image.manifest();
    Ok(VerifyReport {
        dir: dir.as_ref().to_path_buf(),
        producer: b.producer.clone(),
        kernel_release: b.host.kernel_release.clone(),
        cpu_vendor: b.host.cpu.vendor.clone(),
        manifest_bytes: image.manifest_len(),
        threads: b.threads.len(),
        vmas: b.vmas.len(),
        files: b.files.len(),
        shared_objects: b.shared_memory.len(),
        fds: b.fds.len(),
        page_runs: b.page_run_count(),
        stored_bytes: b.stored_page_bytes(),
        pages_bytes: b.pages.size,
        chunks: b.pages.chunks.len(),
        chunk_size: b.pages.chunk_size,
        pages,
        host,
        working_set,
    })
}

fn check_working_set(image: &Image) -> Result<Option<WorkingSetSummary>> {
    let Some(ws) = WorkingSet::load(image)? else {
        return Ok(None);
    };
    let file_bytes = match ws.pages_file() {
        Some(index) => {
            let pages = index.open(image)?.read()?;
            matches_pages_file(image, &pages)?;
            Some(pages.len())
        }
        None => None,
    };
    Ok(Some(WorkingSetSummary {
        ranges: ws.ranges().len(),
        pages: ws.page_count(),
        file_bytes,
    }))
}
