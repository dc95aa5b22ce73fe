//! Every way an image is refused, each with the error that names it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;

use sprout_snapshot::image::limits::*;
use sprout_snapshot::image::*;

use crate::common::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    _rootfs: Rootfs,
    dir: PathBuf,
    body: ManifestBody,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = image_dir(&tmp, "img");
    let body = write_sample(&dir, &rootfs).body;
    Fixture {
        _tmp: tmp,
        _rootfs: rootfs,
        dir,
        body,
    }
}

/// Parses `body` (re-enveloped with a correct checksum) and returns the
/// error it must produce.
fn refused(body: &ManifestBody) -> ImageError {
    match parse_manifest(&manifest_of(body)) {
        Ok(_) => panic!("accepted an invalid body"),
        Err(e) => e,
    }
}

fn assert_invalid(body: &ManifestBody, field_prefix: &str) {
    match refused(body) {
        ImageError::Invalid { field, reason } => assert!(
            field.starts_with(field_prefix),
            "expected a complaint about {field_prefix}, got {field}: {reason}"
        ),
        e => panic!("expected Invalid({field_prefix}), got {e:?}"),
    }
}

#[test]
fn truncated_pages_file() {
    let f = fixture();
    let p = f.dir.join("pages.img");
    let len = fs::metadata(&p).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - PAGE)
        .unwrap();
    match Image::open(&f.dir).unwrap_err() {
        ImageError::Truncated {
            file,
            expected,
            actual,
        } => {
            assert_eq!(file, p);
            assert_eq!(expected, len);
            assert_eq!(actual, len - PAGE);
        }
        e => panic!("{e:?}"),
    }
    // verify() reports the same, since the manifest cannot be trusted to
    // describe the file.
    assert!(matches!(verify(&f.dir), Err(ImageError::Truncated { .. })));
}

#[test]
fn pages_file_with_trailing_data() {
    let f = fixture();
    let p = f.dir.join("pages.img");
    let len = fs::metadata(&p).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len + PAGE)
        .unwrap();
    let e = Image::open(&f.dir).unwrap_err();
    assert!(
        matches!(e, ImageError::Invalid { ref field, .. } if field == "pages.size"),
        "{e:?}"
    );
}

#[test]
fn truncated_and_garbage_manifests() {
    let f = fixture();
    let good = fs::read(f.dir.join("manifest.json")).unwrap();
    for cut in [0, 1, 10, good.len() / 3, good.len() / 2, good.len() - 3] {
        replace_manifest(&f.dir, &good[..cut]);
        let e = Image::open(&f.dir).unwrap_err();
        assert!(matches!(e, ImageError::Json { .. }), "cut at {cut}: {e:?}");
    }
    for garbage in [
        &b"hello"[..],
        b"\xff\xfe\x00garbage",
        b"[]",
        b"{}",
        b"null",
        b"{\"format\":1,\"version\":1}",
    ] {
        replace_manifest(&f.dir, garbage);
        let e = Image::open(&f.dir).unwrap_err();
        assert!(
            matches!(e, ImageError::Json { .. } | ImageError::NotAnImage { .. }),
            "{garbage:?}: {e:?}"
        );
    }
    replace_manifest(&f.dir, br#"{"format":"oci-layout","version":1}"#);
    assert!(
        matches!(Image::open(&f.dir), Err(ImageError::NotAnImage { found }) if found == "oci-layout")
    );
    // A missing manifest is named.
    fs::remove_file(f.dir.join("manifest.json")).unwrap();
    match Image::open(&f.dir).unwrap_err() {
        ImageError::Io { path, source, .. } => {
            assert_eq!(path, f.dir.join("manifest.json"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn one_flipped_byte_in_the_manifest_body() {
    let f = fixture();
    let good = fs::read(f.dir.join("manifest.json")).unwrap();
    // Change one character inside a string of the body: still valid JSON,
    // so only the checksum can catch it.
    let at = good
        .windows(b"sprout test".len())
        .position(|w| w == b"sprout test")
        .unwrap();
    let mut bad = good.clone();
    bad[at + 3] ^= 0x01;
    replace_manifest(&f.dir, &bad);
    match Image::open(&f.dir).unwrap_err() {
        ImageError::ChecksumMismatch {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains("manifest"), "{what}");
            assert_ne!(expected, actual);
        }
        e => panic!("{e:?}"),
    }
    // Every single-bit flip anywhere in the manifest is refused.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bad = good.clone();
        let i = (x as usize) % bad.len();
        bad[i] ^= 1 << ((x >> 32) % 8);
        if bad == good {
            continue;
        }
        assert!(parse_manifest(&bad).is_err(), "flip at {i} accepted");
    }
    // Whitespace is bytes too: the checksum is over the body as stored.
    let body_at = good.windows(7).position(|w| w == b"\"body\":").unwrap() + 7;
    let mut spaced = good[..body_at + 1].to_vec();
    spaced.push(b' ');
    spaced.extend_from_slice(&good[body_at + 1..]);
    assert!(matches!(
        parse_manifest(&spaced),
        Err(ImageError::ChecksumMismatch { .. })
    ));
}

#[test]
fn one_flipped_byte_in_the_pages_names_the_chunk() {
    let f = fixture();
    let chunk = f.body.pages.chunk_size;
    let p = f.dir.join("pages.img");
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let at = chunk + 1234;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x80], at).unwrap();
    let image = Image::open(&f.dir).unwrap();
    match image.verify_pages().unwrap_err() {
        ImageError::ChunkCorrupt {
            index,
            offset,
            len,
            expected,
            actual,
        } => {
            assert_eq!(index, 1);
            assert_eq!(offset, chunk);
            assert_eq!(len, chunk);
            assert_ne!(expected, actual);
        }
        e => panic!("{e:?}"),
    }
    image.verify_chunks(0..1).unwrap();
    assert!(image.verify_chunks(1..2).is_err());
    let report = verify(&f.dir).unwrap();
    assert!(!report.intact());
    assert!(report.to_string().contains("chunk 1"), "{report}");
}

#[test]
fn wrong_version() {
    let f = fixture();
    let good = String::from_utf8(fs::read(f.dir.join("manifest.json")).unwrap()).unwrap();
    for (v, found) in [("2", 2u64), ("0", 0), ("99999999999", 99_999_999_999)] {
        let bad = good.replacen("\"version\":1", &format!("\"version\":{v}"), 1);
        replace_manifest(&f.dir, bad.as_bytes());
        match Image::open(&f.dir).unwrap_err() {
            ImageError::UnsupportedVersion {
                found: got,
                supported,
            } => {
                assert_eq!(got, found);
                assert_eq!(supported, 1);
            }
            e => panic!("{e:?}"),
        }
    }
    // A future version with fields this one does not know is still
    // reported as a version problem, not as malformed JSON.
    let future = good.replacen("\"version\":1", "\"version\":2,\"signature\":\"x\"", 1);
    assert!(matches!(
        parse_manifest(future.as_bytes()),
        Err(ImageError::UnsupportedVersion { found: 2, .. })
    ));
    let bad = good.replacen("\"version\":1", "\"version\":\"1\"", 1);
    assert!(matches!(
        parse_manifest(bad.as_bytes()),
        Err(ImageError::Invalid { .. })
    ));
    // Unknown fields in a version-1 envelope are refused.
    let extra = good.replacen("\"version\":1", "\"version\":1,\"extra\":true", 1);
    assert!(matches!(
        parse_manifest(extra.as_bytes()),
        Err(ImageError::Json { .. })
    ));
}

#[test]
fn unknown_fields_in_the_body_are_refused() {
    let f = fixture();
    let mut v = serde_json::to_value(&f.body).unwrap();
    v["vmas"][0]["huge"] = serde_json::Value::Bool(true);
    let e = parse_manifest(&envelope(&serde_json::to_vec(&v).unwrap())).unwrap_err();
    match e {
        ImageError::Json { path, message, .. } => {
            assert!(path.starts_with("vmas[0]"), "{path}");
            assert!(message.contains("huge"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    let mut v = serde_json::to_value(&f.body).unwrap();
    v["fds"][3]["object"]["mode"] = 0.into();
    assert!(matches!(
        parse_manifest(&envelope(&serde_json::to_vec(&v).unwrap())),
        Err(ImageError::Json { .. })
    ));
    let mut v = serde_json::to_value(&f.body).unwrap();
    v["vmas"][0]["flags"] = serde_json::json!(["ht"]);
    assert!(matches!(
        parse_manifest(&envelope(&serde_json::to_vec(&v).unwrap())),
        Err(ImageError::Json { .. })
    ));
}

fn foreign(image_host: &Host, field: &str) {
    let here = Host::current().unwrap();
    match image_host.check_compatible(&here).unwrap_err() {
        ImageError::Foreign {
            field: f,
            image,
            host,
        } => {
            assert_eq!(f, field);
            assert_ne!(image, host);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn foreign_kernel_cpu_and_xsave() {
    let here = Host::current().unwrap();
    here.check_compatible(&here).unwrap();

    let mut h = here.clone();
    h.kernel_release = "5.10.0-28-amd64".into();
    foreign(&h, "host.kernel_release");

    let mut h = here.clone();
    h.cpu.vendor = if here.cpu.vendor == "GenuineIntel" {
        "AuthenticAMD"
    } else {
        "GenuineIntel"
    }
    .into();
    foreign(&h, "host.cpu.vendor");

    // A feature the image's CPU had and this one lacks (bit 31 of leaf 7
    // ECX is reserved on every CPU so far).
    let mut h = here.clone();
    h.cpu.leaf7_ecx |= 1 << 31;
    foreign(&h, "host.cpu.leaf7_ecx");
    // Fewer features in the image is fine.
    let mut h = here.clone();
    h.cpu.leaf1_ecx &= !(1 << 28);
    h.check_compatible(&here).unwrap();

    let mut h = here.clone();
    h.cpu.xstate_regset_size += 64;
    foreign(&h, "host.cpu.xstate_regset_size");

    let mut h = here.clone();
    h.cpu.xcr0 ^= 1 << 9;
    foreign(&h, "host.cpu.xcr0");

    let mut h = here.clone();
    if let Some(v) = &mut h.vdso {
        v.sha256.0[0] ^= 1;
        foreign(&h, "host.vdso.sha256");
        let mut h = here.clone();
        h.vdso.as_mut().unwrap().areas[0].size += PAGE;
        foreign(&h, "host.vdso.areas");
    }
}

#[test]
fn a_foreign_image_is_intact_but_refused_by_check_host() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = image_dir(&tmp, "img");
    write_sample_with(&dir, &rootfs, |b| {
        b.host.kernel_release = "4.19.0-foreign".into()
    });
    let image = Image::open(&dir).unwrap();
    image.verify_pages().unwrap();
    let e = image.check_host(&Host::current().unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Foreign {
                field: "host.kernel_release",
                ..
            }
        ),
        "{e:?}"
    );
    let report = verify(&dir).unwrap();
    assert!(report.intact() && !report.ok());
    assert!(report.to_string().contains("4.19.0-foreign"), "{report}");

    // A host whose mmap_min_addr is above the image's lowest mapping.
    let f = fixture();
    let mut here = Host::current().unwrap();
    here.mmap_min_addr = 0x50_0000;
    let e = Image::open(&f.dir).unwrap().check_host(&here).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::Foreign {
                field: "vm.mmap_min_addr",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn xsave_must_fit_the_images_host_and_the_kernels_rules() {
    let f = fixture();
    let mut b = f.body.clone();
    b.threads[1].xsave.push(0);
    assert_invalid(&b, "threads[1].xsave");
    let mut b = f.body.clone();
    b.threads[0].xsave[520] = 1; // xcomp_bv
    assert_invalid(&b, "threads[0].xsave");
    let mut b = f.body.clone();
    b.threads[0].xsave[530] = 1; // reserved header byte
    assert_invalid(&b, "threads[0].xsave");
    let mut b = f.body.clone();
    b.threads[0].xsave[512 + 2] = 0x06; // AMX tile bits 17, 18
    assert_invalid(&b, "threads[0].xsave");
    let mut b = f.body.clone();
    b.threads[0].xsave[27] = 1; // MXCSR reserved bits
    assert_invalid(&b, "threads[0].xsave");
    // The host record and every thread must agree on the size.
    let mut b = f.body.clone();
    b.host.cpu.xstate_regset_size += 64;
    assert_invalid(&b, "threads[0].xsave");
}

#[test]
fn registers_and_syscall_state_are_checked() {
    let f = fixture();
    let mut b = f.body.clone();
    b.threads[0].regs.cs = 0x23; // 32-bit code
    assert_invalid(&b, "threads[0].regs.cs");
    let mut b = f.body.clone();
    b.threads[0].regs.rip = 0xffff_ffff_8100_0000;
    assert_invalid(&b, "threads[0].regs.rip");
    let mut b = f.body.clone();
    b.threads[1].regs.rax = 0; // "restart" but rax is not the syscall number
    assert_invalid(&b, "threads[1].regs.rax");
    let mut b = f.body.clone();
    b.threads[2].regs.rax = (-516i64) as u64; // RESTART_BLOCK left in place
    assert_invalid(&b, "threads[2].regs.rax");
    let mut b = f.body.clone();
    b.threads[2].syscall = SyscallRestart::Eintr { nr: 5000 };
    assert_invalid(&b, "threads[2].syscall.nr");
    let mut b = f.body.clone();
    b.threads[1].syscall = SyscallRestart::Restart {
        nr: 202,
        code: Some(-4), // -EINTR is a result, not a restart code
    };
    assert_invalid(&b, "threads[1].syscall.code");
    // An image from before the restart code was recorded still loads.
    let mut b = f.body.clone();
    b.threads[1].syscall = SyscallRestart::Restart {
        nr: 202,
        code: None,
    };
    parse_manifest(&manifest_of(&b)).unwrap();
    let mut b = f.body.clone();
    b.threads[1].tid = b.threads[0].tid;
    assert_invalid(&b, "threads[1].tid");
    let mut b = f.body.clone();
    b.threads.clear();
    assert_invalid(&b, "threads");
    let mut b = f.body.clone();
    b.process.pid = 7;
    assert_invalid(&b, "process.pid");
    let mut b = f.body.clone();
    b.threads[0].rseq.as_mut().unwrap().ptr += 8;
    assert_invalid(&b, "threads[0].rseq.ptr");
    let mut b = f.body.clone();
    b.threads[0].pending[0].siginfo[0] = 11;
    assert_invalid(&b, "threads[0].pending[0].siginfo");
    let mut b = f.body.clone();
    b.process.posix_timers[0].notify = TimerNotify::Thread { tid: 42 };
    assert_invalid(&b, "process.posix_timers[0].notify.tid");
    let mut b = f.body.clone();
    b.process.sigactions[0].signal = 9;
    assert_invalid(&b, "process.sigactions[0].signal");
    let mut b = f.body.clone();
    b.process.mm.end_code = b.process.mm.start_code;
    assert_invalid(&b, "process.mm.end_code");
    let mut b = f.body.clone();
    b.process.mm.auxv.pop();
    assert_invalid(&b, "process.mm.auxv");
}

#[test]
fn overlapping_and_misplaced_vmas() {
    let f = fixture();
    let v = &f.body.vmas;

    let mut b = f.body.clone();
    b.vmas[1].start -= PAGE; // overlaps vmas[0]
    assert_invalid(&b, "vmas[1]");
    let mut b = f.body.clone();
    b.vmas.swap(2, 3); // unsorted
    assert_invalid(&b, "vmas[3]");
    let mut b = f.body.clone();
    b.vmas[0].start += 1;
    assert_invalid(&b, "vmas[0].start");
    let mut b = f.body.clone();
    b.vmas[0].end = b.vmas[0].start;
    assert_invalid(&b, "vmas[0]");
    let mut b = f.body.clone();
    b.vmas[0].start = 0;
    assert_invalid(&b, "vmas[0]");
    let mut b = f.body.clone();
    let last = b.vmas.len() - 1;
    b.vmas[last].end = TASK_SIZE_MAX + PAGE;
    assert_invalid(&b, &format!("vmas[{last}]"));
    let mut b = f.body.clone();
    b.vmas[0].backing = Backing::File { file: 9, offset: 0 };
    assert_invalid(&b, "vmas[0].backing.file");
    let mut b = f.body.clone();
    b.vmas[0].backing = Backing::File {
        file: 0,
        offset: 100,
    };
    assert_invalid(&b, "vmas[0].backing.offset");
    let mut b = f.body.clone();
    b.vmas[0].shared = true;
    b.vmas[0].backing = Backing::Anonymous;
    assert_invalid(&b, "vmas[0].shared");
    let mut b = f.body.clone();
    b.vmas[0].backing = Backing::Heap; // a second [heap]
    assert_invalid(&b, "vmas[2]");
    // Pages stored for a VMA whose pages are never stored.
    let dp = v.iter().position(|v| v.has(VmFlag::Droppable)).unwrap();
    let mut b = f.body.clone();
    b.vmas[dp].pages = vec![PageRun {
        page: 0,
        count: 1,
        offset: 0,
    }];
    assert_invalid(&b, &format!("vmas[{dp}].pages"));
    // vDSO mappings must be laid out as the host record says.
    if let Some(i) = v.iter().position(|v| v.backing == Backing::Vdso) {
        let mut b = f.body.clone();
        b.vmas[i].end += PAGE;
        if i + 1 < b.vmas.len() && b.vmas[i + 1].start < b.vmas[i].end {
            b.vmas[i + 1].start += PAGE;
        }
        assert!(matches!(refused(&b), ImageError::Invalid { .. }));
        let mut b = f.body.clone();
        b.process.mm.auxv[3] += PAGE; // AT_SYSINFO_EHDR elsewhere
        assert_invalid(&b, "process.mm.auxv");
        // A process that unmapped its whole vDSO family is fine, as long as
        // its auxv does not point there.
        let mut b = f.body.clone();
        b.vmas.retain(|v| {
            !matches!(
                v.backing,
                Backing::Vdso | Backing::Vvar | Backing::VvarVclock
            )
        });
        assert_invalid(&b, "process.mm.auxv");
        b.process.mm.auxv.drain(2..4);
        parse_manifest(&manifest_of(&b)).unwrap();
    }
}

#[test]
fn page_ranges_outside_their_vma_or_the_pages_file() {
    let f = fixture();
    let heap = f
        .body
        .vmas
        .iter()
        .position(|v| v.backing == Backing::Heap)
        .unwrap();
    let pages = f.body.vmas[heap].page_count();
    let field = format!("vmas[{heap}].pages");

    let mut b = f.body.clone();
    b.vmas[heap].pages[1].page = pages - 1; // 5 pages from the last one
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[1].page = u64::MAX - 1; // overflow
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[1].page = 1; // overlaps the first run
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages.swap(0, 1); // unsorted
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[0].count = 0;
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[0].offset = b.pages.size; // past EOF
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[0].offset = b.pages.size - PAGE; // runs past EOF
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[0].offset = u64::MAX - PAGE + 1; // overflow
    assert_invalid(&b, &field);
    let mut b = f.body.clone();
    b.vmas[heap].pages[0].offset += 512; // misaligned
    assert_invalid(&b, &field);
    // Guard pages: inside the VMA, sorted, never also stored.
    let anon = f
        .body
        .vmas
        .iter()
        .position(|v| !v.guard_pages.is_empty())
        .unwrap();
    let gfield = format!("vmas[{anon}].guard_pages");
    let mut b = f.body.clone();
    b.vmas[anon].guard_pages[0] = PageSpan { page: 3, count: 1 }; // a stored page
    assert_invalid(&b, &gfield);
    let mut b = f.body.clone();
    b.vmas[anon].guard_pages[1] = PageSpan { page: 22, count: 1 }; // last stored page
    assert_invalid(&b, &gfield);
    let mut b = f.body.clone();
    b.vmas[anon].guard_pages[1].page = b.vmas[anon].page_count() - 1; // runs out of the VMA
    assert_invalid(&b, &gfield);
    let mut b = f.body.clone();
    b.vmas[anon].guard_pages.swap(0, 1);
    assert_invalid(&b, &gfield);
    let mut b = f.body.clone();
    b.vmas[anon].guard_pages[0] = PageSpan { page: 23, count: 1 }; // right after the run: fine
    parse_manifest(&manifest_of(&b)).unwrap();
    let mut b = f.body.clone();
    b.shared_memory[0].pages[0].page = 2; // outside the 2-page object
    assert_invalid(&b, "shared_memory[0].pages");
    // The pages index itself.
    let mut b = f.body.clone();
    b.pages.chunks.pop();
    assert_invalid(&b, "pages.chunks");
    let mut b = f.body.clone();
    b.pages.file = "../../etc/shadow".into();
    assert_invalid(&b, "pages.file");
    let mut b = f.body.clone();
    b.pages.chunk_size = 1000;
    assert_invalid(&b, "pages.chunk_size");
}

#[test]
fn paths_escaping_or_malformed_in_the_manifest() {
    let f = fixture();
    for bad in [
        "../../etc/passwd",
        "/../../etc/passwd",
        "/usr/lib/../../../etc/passwd",
        "usr/lib/libfoo.so",
        "/a//b",
        "/a\0b",
        "",
    ] {
        let mut b = f.body.clone();
        b.files[0].path = bad.into();
        assert_invalid(&b, "files[0].path");
        let mut b = f.body.clone();
        b.process.cwd = bad.into();
        assert_invalid(&b, "process.cwd");
        let mut b = f.body.clone();
        b.fds[3].object = FdObject::File {
            path: bad.into(),
            offset: 0,
        };
        assert_invalid(&b, "fds[3].object.path");
    }
    let mut b = f.body.clone();
    b.files[1].path = b.files[0].path.clone();
    assert_invalid(&b, "files[1].path");
}

#[test]
fn fd_references_and_kinds_are_checked() {
    let f = fixture();
    let mut b = f.body.clone();
    b.fds[12].object = FdObject::Dup { of: 99 };
    assert_invalid(&b, "fds[12].object.of");
    let mut b = f.body.clone();
    b.fds[12].object = FdObject::Dup { of: 12 };
    assert_invalid(&b, "fds[12].object.of");
    let mut b = f.body.clone();
    if let FdObject::Epoll { targets } = &mut b.fds[7].object {
        targets[0].tfd = 7;
    }
    assert_invalid(&b, "fds[7].object.targets[0].tfd");
    let mut b = f.body.clone();
    b.fds.swap(3, 4);
    assert_invalid(&b, "fds[4].fd");
    let mut b = f.body.clone();
    b.fds[16].fd = MAX_FD_NUMBER;
    assert_invalid(&b, "fds[16].fd");
    let mut b = f.body.clone();
    b.fds[3].flags = libc::O_CREAT;
    assert_invalid(&b, "fds[3].flags");
    let mut b = f.body.clone();
    if let FdObject::Pipe { data, .. } = &mut b.fds[5].object {
        *data = b"second copy".to_vec();
    }
    assert_invalid(&b, "fds[5].object.data");
    let mut b = f.body.clone();
    if let FdObject::Socket(s) = &mut b.fds[9].object {
        s.local = Some(SockAddr::Inet {
            addr: "[::1]:80".parse().unwrap(),
        });
    }
    assert_invalid(&b, "fds[9].object.local");
    let mut b = f.body.clone();
    if let FdObject::Socket(s) = &mut b.fds[9].object {
        s.socket_type = SocketType::Dgram;
        s.protocol = 17;
        s.options.nodelay = false;
    }
    assert_invalid(&b, "fds[9].object.state");
    let mut b = f.body.clone();
    b.fds.push(b.fds[11].clone());
    b.fds.last_mut().unwrap().fd = 17;
    assert_invalid(&b, "fds[17].object.state.pair");
}

#[test]
fn limits_exceeded() {
    let f = fixture();
    // The manifest's own size, before it is parsed.
    let huge = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
    match parse_manifest(&huge).unwrap_err() {
        ImageError::Limit { value, max, .. } => {
            assert_eq!(value, MAX_MANIFEST_BYTES + 1);
            assert_eq!(max, MAX_MANIFEST_BYTES);
        }
        e => panic!("{e:?}"),
    }
    let limit = |b: &ManifestBody, what: &str| match refused(b) {
        ImageError::Limit {
            what: w,
            value,
            max,
        } => {
            assert!(w.starts_with(what), "{w}");
            assert!(value > max);
        }
        e => panic!("expected Limit({what}), got {e:?}"),
    };
    let mut b = f.body.clone();
    b.fds = (0..=MAX_FDS as i32)
        .map(|fd| Fd {
            fd,
            cloexec: false,
            flags: 0,
            object: FdObject::Device {
                device: CharDevice::Null,
            },
        })
        .collect();
    limit(&b, "fds");
    let mut b = f.body.clone();
    let v = b.vmas[0].clone();
    b.vmas = vec![v; MAX_VMAS + 1];
    limit(&b, "vmas");
    let mut b = f.body.clone();
    b.files[0].path = format!("/{}", "x".repeat(MAX_PATH_BYTES));
    limit(&b, "files[0].path");
    let mut b = f.body.clone();
    b.process.credentials.groups = vec![0; MAX_GROUPS + 1];
    limit(&b, "process.credentials.groups");
    let mut b = f.body.clone();
    b.threads[0].comm = "a-very-long-thread-name".into();
    limit(&b, "threads[0].comm");
    let mut b = f.body.clone();
    b.pages.size = MAX_PAGES_FILE_BYTES + PAGE;
    limit(&b, "pages.size");
    let mut b = f.body.clone();
    b.process.mm.auxv = vec![0; MAX_AUXV_WORDS + 2];
    limit(&b, "process.mm.auxv");
}

#[test]
fn bad_permissions_on_the_image() {
    let f = fixture();
    for mode in [0o755, 0o750, 0o701, 0o707] {
        fs::set_permissions(&f.dir, fs::Permissions::from_mode(mode)).unwrap();
        match Image::open(&f.dir).unwrap_err() {
            ImageError::BadPermissions { path, mode: m, .. } => {
                assert_eq!(path, f.dir);
                assert_eq!(m, mode);
            }
            e => panic!("{mode:o}: {e:?}"),
        }
    }
    fs::set_permissions(&f.dir, fs::Permissions::from_mode(0o700)).unwrap();
    Image::open(&f.dir).unwrap();

    // Owned by someone else (this test runs as root, which can chown).
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&f.dir, Some(4242), Some(4242)).unwrap();
        let e = Image::open(&f.dir).unwrap_err();
        assert!(
            matches!(e, ImageError::BadPermissions { uid: 4242, .. }),
            "{e:?}"
        );
        std::os::unix::fs::chown(&f.dir, Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(f.dir.join("pages.img"), Some(4242), None).unwrap();
        let e = Image::open(&f.dir).unwrap_err();
        assert!(
            matches!(e, ImageError::BadPermissions { uid: 4242, .. }),
            "{e:?}"
        );
        std::os::unix::fs::chown(f.dir.join("pages.img"), Some(0), None).unwrap();
    }

    // A group-writable manifest.
    fs::set_permissions(
        f.dir.join("manifest.json"),
        fs::Permissions::from_mode(0o660),
    )
    .unwrap();
    assert!(matches!(
        Image::open(&f.dir),
        Err(ImageError::BadPermissions { .. })
    ));
    fs::set_permissions(
        f.dir.join("manifest.json"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // A symlinked manifest is not followed.
    let real = f.dir.join("real.json");
    fs::rename(f.dir.join("manifest.json"), &real).unwrap();
    std::os::unix::fs::symlink(&real, f.dir.join("manifest.json")).unwrap();
    assert!(matches!(Image::open(&f.dir), Err(ImageError::Io { .. })));
    fs::remove_file(f.dir.join("manifest.json")).unwrap();

    // A FIFO in its place is refused without blocking.
    nix::unistd::mkfifo(
        &f.dir.join("manifest.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let e = Image::open(&f.dir).unwrap_err();
    assert!(
        matches!(e, ImageError::BadPermissions { reason, .. } if reason.contains("regular")),
        "{e:?}"
    );
    fs::remove_file(f.dir.join("manifest.json")).unwrap();
    fs::rename(&real, f.dir.join("manifest.json")).unwrap();
    Image::open(&f.dir).unwrap();

    // A file where the directory should be.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    assert!(Image::open(&file).is_err());
    assert!(matches!(
        ImageWriter::create(&file),
        Err(ImageError::BadPermissions { .. })
    ));
}

#[test]
fn a_vdso_area_whose_end_overflows_is_invalid_not_a_panic() {
    let f = fixture();
    let mut body = f.body.clone();
    let Some(v) = body.host.vdso.as_mut().filter(|v| v.areas.len() >= 2) else {
        return; // a host without a vDSO family of two areas
    };
    v.areas[1].offset = 0u64.wrapping_sub(PAGE);
    v.areas[1].size = PAGE;
    assert_invalid(&body, "host.vdso.areas[1]");
}

#[test]
fn runs_describing_more_pages_than_any_image_holds_are_invalid() {
    // Runs may share stored data, but not to describe more pages than
    // any image may hold: a new anonymous VMA of 256 GiB and more, every
    // run pointing at the same stored page.
    let f = fixture();
    let mut body = f.body.clone();
    let i = body
        .vmas
        .iter()
        .position(|v| matches!(v.backing, Backing::Anonymous) && !v.pages.is_empty())
        .expect("an anonymous VMA with stored pages");
    let offset = 0;
    let per_run = 1u64 << 16;
    let n = MAX_PAGES_FILE_BYTES / PAGE / per_run + 2;
    let mut v = body.vmas[i].clone();
    v.guard_pages.clear();
    v.start = 0x1000_0000_0000;
    v.end = v.start + n * per_run * PAGE;
    assert!(
        body.vmas
            .iter()
            .all(|o| o.end <= v.start || o.start >= v.end)
    );
    v.pages = (0..n)
        .map(|k| PageRun {
            page: k * per_run,
            count: per_run,
            offset,
        })
        .collect();
    let at = body.vmas.partition_point(|o| o.start < v.start);
    body.vmas.insert(at, v);
    // A pages file big enough for one such run (its data is never read:
    // the manifest alone is refused).
    let p = &mut body.pages;
    p.size = (per_run * PAGE)
        .max(p.size)
        .next_multiple_of(MAX_CHUNK_BYTES);
    p.chunk_size = MAX_CHUNK_BYTES;
    let one = p.chunks[0];
    p.chunks = vec![one; (p.size / MAX_CHUNK_BYTES) as usize];
    assert_invalid(&body, "pages");
}
