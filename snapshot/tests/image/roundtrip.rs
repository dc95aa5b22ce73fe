use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};

use sprout_snapshot::image::*;

use crate::common::*;

#[test]
fn round_trip_of_a_synthetic_image() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = image_dir(&tmp, "img");
    let sample = write_sample(&dir, &rootfs);

    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["manifest.json", "pages.img"]);

    let image = Image::open(&dir).unwrap();
    assert_eq!(image.manifest(), &sample.body);
    let b = image.manifest();
    assert_eq!(b.pages.file, "pages.img");
    assert_eq!(b.pages.chunk_size, 64 << 10);
    assert_eq!(b.pages.size % PAGE, 0);
    assert_eq!(b.pages.chunks.len() as u64, b.pages.size.div_ceil(64 << 10));
    assert!(b.pages.chunks.len() >= 2, "the sample spans several chunks");
    assert_eq!(b.stored_page_bytes(), b.pages.size);
    image.verify_pages().unwrap();
    image.check_host(&Host::current().unwrap()).unwrap();

    // Every run reads back what was written, through the pages file.
    for (offset, data) in &sample.runs {
        let mut buf = vec![0u8; data.len()];
        image.pages_file().read_exact_at(&mut buf, *offset).unwrap();
        assert_eq!(&buf, data);
    }

    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.threads, 3);
    assert_eq!(report.vmas, b.vmas.len());
    assert_eq!(report.fds, 17);
    assert_eq!(report.files, 2);
    let text = report.to_string();
    assert!(text.contains("pages:    ok"), "{text}");
    assert!(text.contains("host:     ok"), "{text}");

    // The envelope is as documented, and the manifest re-encodes to the
    // same bytes.
    let raw = fs::read(dir.join("manifest.json")).unwrap();
    assert!(raw.starts_with(b"{\"format\":\"sprout-image\",\"version\":1,\"checksum\":\"sha256:"));
    assert_eq!(encode_manifest(b).unwrap(), raw);
    assert_eq!(&parse_manifest(&raw).unwrap(), b);
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(json["body"]["vmas"][0]["start"], "0x400000");
    assert_eq!(json["body"]["vmas"][0]["prot"], "r-x");
    assert_eq!(json["body"]["threads"][1]["syscall"]["state"], "restart");
    assert_eq!(json["body"]["fds"][7]["object"]["type"], "epoll");
    assert_eq!(json["body"]["process"]["rlimits"][1]["hard"], "unlimited");

    // `SPROUT_FUZZ_SEEDS=DIR` writes this manifest as seeds for the fuzz
    // targets (snapshot/fuzz/seeds).
    if let Some(out) = std::env::var_os("SPROUT_FUZZ_SEEDS") {
        let out = std::path::Path::new(&out);
        fs::create_dir_all(out.join("manifest")).unwrap();
        fs::create_dir_all(out.join("manifest_body")).unwrap();
        fs::write(out.join("manifest/sample.json"), &raw).unwrap();
        fs::write(
            out.join("manifest_body/sample.json"),
            serde_json::to_vec(b).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn a_pretty_printed_manifest_is_checked_over_its_stored_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = image_dir(&tmp, "img");
    let sample = write_sample(&dir, &rootfs);
    // Another producer may format the body differently: the checksum is
    // over the bytes as stored, so this is as valid as the compact form.
    let pretty = serde_json::to_vec_pretty(&sample.body).unwrap();
    let bytes = envelope(&pretty);
    assert_eq!(parse_manifest(&bytes).unwrap(), sample.body);
}

#[test]
fn writer_takes_an_empty_directory_and_refuses_a_full_one() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = image_dir(&tmp, "img");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    write_sample(&dir, &rootfs);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    match ImageWriter::create(&dir) {
        Err(ImageError::NotEmpty { path }) => assert_eq!(path, dir),
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    // The refused writer left the existing image alone.
    Image::open(&dir).unwrap().verify_pages().unwrap();
}

#[test]
fn an_unfinished_or_failed_writer_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = image_dir(&tmp, "dropped");
    {
        let mut w = ImageWriter::create(&dir).unwrap();
        w.write_pages(&vec![1u8; 8192]).unwrap();
    }
    assert!(!dir.exists(), "a dropped writer removes its directory");

    let dir = image_dir(&tmp, "failed");
    let mut w = ImageWriter::create(&dir).unwrap();
    let e = w
        .append_pages(3 * PAGE, |_, _| {
            Err(std::io::Error::from_raw_os_error(libc::ESRCH))
        })
        .unwrap_err();
    assert!(matches!(e, ImageError::Io { .. }), "{e:?}");
    assert!(
        w.write_pages(&[0u8; 4096]).is_err(),
        "a failed writer stays failed"
    );
    drop(w);
    assert!(!dir.exists());

    // finish() validates the body and, refusing it, removes everything.
    let rootfs = Rootfs::new();
    let good = image_dir(&tmp, "good");
    let body = write_sample(&good, &rootfs).body;
    let dir = image_dir(&tmp, "invalid");
    let mut w = ImageWriter::create(&dir).unwrap();
    w.write_pages(&vec![0u8; 4096]).unwrap();
    let mut bad = body.clone();
    bad.threads.clear();
    let e = w.finish(bad).unwrap_err();
    assert!(
        matches!(e, ImageError::Invalid { ref field, .. } if field == "threads"),
        "{e:?}"
    );
    assert!(!dir.exists());
}

#[test]
fn writer_checks_page_multiples_and_chunk_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(image_dir(&tmp, "a")).unwrap();
    assert!(matches!(
        w.write_pages(&[0u8; 100]),
        Err(ImageError::Invalid { .. })
    ));
    assert!(matches!(
        ImageWriter::with_chunk_size(image_dir(&tmp, "b"), 3 << 16),
        Err(ImageError::Invalid { .. })
    ));
    assert!(matches!(
        ImageWriter::with_chunk_size(image_dir(&tmp, "c"), 4096),
        Err(ImageError::Invalid { .. })
    ));
    assert!(!image_dir(&tmp, "b").exists());
}
