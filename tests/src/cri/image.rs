//! The sandbox ("pause") image, built on the machine: no registry is reachable from a test.
//!
//! The image is one layer holding a static busybox; its entrypoint sleeps forever, which is
//! all a pod's infrastructure container does. It is written as an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) packed into one tar archive, which
//! `ctr images import` takes as it is.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// The name the rig's containerd knows the sandbox image by (its `sandbox_image`).
pub const PAUSE_IMAGE: &str = "wren.test/pause:1";

/// Where Debian's `busybox-static` installs the binary.
pub const STATIC_BUSYBOX: &str = "/bin/busybox";

/// True when `path` is an ELF executable without a program interpreter (statically linked),
/// the only kind that runs in an image holding nothing else.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    static_elf(&bytes)
}

/// Whether the 64-bit little-endian ELF in `bytes` has no `PT_INTERP` program header.
fn static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum))
        .all(|i| u32_at(phoff + i * usize::from(phentsize)).is_some_and(|kind| kind != PT_INTERP))
}

/// Writes the pause image as an OCI archive into `dir` and returns the archive's path.
pub fn build_pause_archive(dir: &Path) -> io::Result<PathBuf> {
    if !is_static_elf(Path::new(STATIC_BUSYBOX)) {
        return Err(io::Error::other(format!(
            "{STATIC_BUSYBOX} is not a static executable: install busybox-static"
        )));
    }
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy(STATIC_BUSYBOX, rootfs.join("bin/busybox"))?;
    let layer_tar = dir.join("layer.tar");
    crate::netns::run(
        Command::new("tar")
            .args(["--create", "--owner=0", "--group=0", "--numeric-owner"])
            .arg("--file")
            .arg(&layer_tar)
            .arg("-C")
            .arg(&rootfs)
            .arg("."),
    )?;

    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> io::Result<(String, usize)> {
        let hex = super::sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let (layer_digest, layer_size) = put(&fs::read(&layer_tar)?)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "infinity"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": PAUSE_IMAGE,
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    let archive = dir.join("pause.oci.tar");
    crate::netns::run(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .arg("."),
    )?;
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with(program_header_kinds: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 56 * program_header_kinds.len()];
        bytes[..5].copy_from_slice(b"\x7fELF\x02");
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(program_header_kinds.len() as u16).to_le_bytes());
        for (i, kind) in program_header_kinds.iter().enumerate() {
            let at = 0x40 + i * 56;
            bytes[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn an_elf_with_an_interpreter_is_not_static() {
        assert!(static_elf(&elf_with(&[1, 1, 2])));
        assert!(!static_elf(&elf_with(&[6, 3, 1])));
        assert!(!static_elf(b"#!/bin/sh\n"));
        let mut truncated = elf_with(&[1, 1]);
        truncated.truncate(0x50);
        assert!(!static_elf(&truncated));
    }
}
