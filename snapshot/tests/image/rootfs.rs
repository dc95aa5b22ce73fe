//! Resolving paths inside a rootfs, and recognizing a changed file.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use sprout_snapshot::image::*;

use crate::common::*;

fn read_in_root(rootfs: &Rootfs, path: &str) -> std::result::Result<String, ImageError> {
    let fd = open_in_root(rootfs.fd.as_fd(), path, OFlag::O_RDONLY)?;
    let mut s = String::new();
    fs::File::from(fd).read_to_string(&mut s).unwrap();
    Ok(s)
}

#[test]
fn paths_resolve_inside_the_rootfs() {
    let rootfs = Rootfs::new();
    let root = rootfs.dir.path();
    assert_ne!(
        fs::read_to_string("/etc/passwd").unwrap(),
        "inside the rootfs\n"
    );
    for p in [
        "/etc/passwd",
        "etc/passwd",
        "../../etc/passwd",
        "/../../../etc/passwd",
        "/usr/lib/../../../../etc/passwd",
    ] {
        assert_eq!(
            read_in_root(&rootfs, p).unwrap(),
            "inside the rootfs\n",
            "{p}"
        );
    }
    // An absolute symlink inside the rootfs pointing out resolves inside.
    std::os::unix::fs::symlink("/etc/passwd", root.join("usr/lib/evil")).unwrap();
    assert_eq!(
        read_in_root(&rootfs, "/usr/lib/evil").unwrap(),
        "inside the rootfs\n"
    );
    // A relative one climbing out stops at the rootfs's root.
    std::os::unix::fs::symlink(
        "../../../../../../../../etc/passwd",
        root.join("usr/lib/climb"),
    )
    .unwrap();
    assert_eq!(
        read_in_root(&rootfs, "/usr/lib/climb").unwrap(),
        "inside the rootfs\n"
    );
    // A file that exists on the host but not in the rootfs is not found.
    assert!(fs::metadata("/etc/hostname").is_ok() || fs::metadata("/etc/os-release").is_ok());
    std::os::unix::fs::symlink("/etc/os-release", root.join("usr/lib/host-only")).unwrap();
    match read_in_root(&rootfs, "/usr/lib/host-only").unwrap_err() {
        ImageError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        e => panic!("{e:?}"),
    }
    // Magic links (/proc/self/root) are refused, not followed to the host.
    std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("usr/lib/magic")).unwrap();
    fs::create_dir_all(root.join("proc")).unwrap();
    assert!(read_in_root(&rootfs, "/usr/lib/magic").is_err());
    // Creating files is not this function's job.
    assert!(matches!(
        open_in_root(rootfs.fd.as_fd(), "/new", OFlag::O_RDWR | OFlag::O_CREAT),
        Err(ImageError::Invalid { .. })
    ));
}

#[test]
fn file_matches_size_and_contents() {
    let rootfs = Rootfs::new();
    let lib = "/usr/lib/libfoo.so";
    let record = rootfs.record(lib);
    assert_eq!(record.size, 3 * PAGE);
    assert_eq!(
        record.sha256,
        Sha256Digest::of(&pattern(3 * PAGE as usize, 7))
    );
    let open = || open_in_root(rootfs.fd.as_fd(), lib, OFlag::O_RDONLY).unwrap();
    file_matches(open(), &record).unwrap();
    file_matches(open(), &record).unwrap(); // from the cache

    // Same size, one byte changed: the cache must not hide it.
    let host_path = rootfs.dir.path().join("usr/lib/libfoo.so");
    let mut data = fs::read(&host_path).unwrap();
    data[100] ^= 1;
    fs::write(&host_path, &data).unwrap();
    match file_matches(open(), &record).unwrap_err() {
        ImageError::FileChanged { path, what, .. } => {
            assert_eq!(path, lib);
            assert_eq!(what, "sha256");
        }
        e => panic!("{e:?}"),
    }
    data.push(0);
    fs::write(&host_path, &data).unwrap();
    assert!(matches!(
        file_matches(open(), &record),
        Err(ImageError::FileChanged { what: "size", .. })
    ));
    let dir = open_in_root(
        rootfs.fd.as_fd(),
        "/usr",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    )
    .unwrap();
    assert!(matches!(
        file_matches(dir, &record),
        Err(ImageError::FileChanged { what: "type", .. })
    ));
}

#[test]
fn file_record_finds_an_elf_build_id() {
    let Ok(f) = fs::File::open("/bin/true") else {
        return;
    };
    let r = file_record(&f, "/bin/true").unwrap();
    assert_eq!(r.size, f.metadata().unwrap().len());
    assert!(r.build_id.is_some(), "Debian's /bin/true has a build-id");
}
