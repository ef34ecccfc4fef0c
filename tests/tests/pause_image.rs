//! The pause OCI image: its layout, and podman loading it and running it as a pod's
//! infra container.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use podwire_testkit::podman::Podman;
use podwire_testkit::*;

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn build_image(dir: &Path, image_ref: &str) -> std::path::PathBuf {
    podwire_testkit::podman::build_pause_image(dir, image_ref)
}

#[test]
fn image_archive_is_a_one_layer_oci_layout() {
    let dir = TempDir::new("img");
    let archive = build_image(dir.path(), "localhost/podwire/pause:test");
    let x = dir.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    ok(
        "tar",
        &["-xf", archive.to_str().unwrap(), "-C", x.to_str().unwrap()],
    );
    assert_eq!(
        json_file(&x.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json_file(&x.join("index.json"));
    let desc = &index["manifests"][0];
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "localhost/podwire/pause:test"
    );
    let blob = |digest: &serde_json::Value| {
        let d = digest
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
            .to_string();
        let p = x.join("blobs/sha256").join(&d);
        // Every blob's name is its content's digest.
        let sum = ok("sha256sum", &[p.to_str().unwrap()]);
        assert_eq!(sum.split_whitespace().next().unwrap(), d);
        p
    };
    let manifest = json_file(&blob(&desc["digest"]));
    let config = json_file(&blob(&manifest["config"]["digest"]));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );
    assert_eq!(config["config"]["User"], "65535:65535");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(&layers[0]["digest"]);
    let listing = ok("tar", &["-tzvf", layer.to_str().unwrap()]);
    let entries: Vec<_> = listing.lines().collect();
    assert_eq!(entries.len(), 1, "only /pause: {listing}");
    assert!(
        entries[0].starts_with("-rwxr-xr-x 0/0") && entries[0].ends_with(" pause"),
        "{listing}"
    );
    // The layer's diff_id is the digest of the uncompressed tar.
    let diff = ok(
        "sh",
        &["-c", &format!("gzip -dc {} | sha256sum", layer.display())],
    );
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        format!("sha256:{}", diff.split_whitespace().next().unwrap())
    );
    // Deterministic: building again gives the same bytes.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let second = build_image(&again, "localhost/podwire/pause:test");
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        std::fs::read(second).unwrap()
    );
}

#[test]
fn podman_loads_the_image_and_runs_it_as_pod_infra() {
    let mut podman = Podman::new("netavark", "", None);
    let dir = TempDir::new("img-podman");
    let image = "localhost/podwire/pause:test";
    let archive = build_image(dir.path(), image);
    let loaded = podman.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(image), "{loaded}");
    let pod = unique_name("pod");
    podman.pods.push(pod.clone());
    podman.ok(&[
        "pod",
        "create",
        "--name",
        &pod,
        "--network",
        "none",
        "--infra-image",
        image,
    ]);
    podman.ok(&["pod", "start", &pod]);
    let infra = podman.ok(&["pod", "inspect", "-f", "{{.InfraContainerID}}", &pod]);
    let pid: i32 = podman
        .ok(&["inspect", "-f", "{{.State.Pid}}", &infra])
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        Path::new("/pause")
    );
    // PID 1 of the pod's own pid namespace, holding a network namespace of its own.
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = nspid
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    assert_ne!(NetNs::from_pid(pid).unwrap(), NetNs::current().unwrap());
    // podman stop sends SIGTERM: pause exits 0, well before the 10 s kill timeout.
    podman.ok(&["pod", "stop", "-t", "10", &pod]);
    let code = wait_for("infra stopped", Duration::from_secs(20), || {
        let s = podman.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &infra,
        ]);
        s.strip_prefix("exited ").map(str::to_string)
    });
    assert_eq!(code, "0");
}
