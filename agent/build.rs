//! Lays out the release `wren` binary so the code a running agent executes sits together.
//!
//! The kernel maps a program's code in 64 KiB windows around each page it executes (fault
//! around, and large folios in the page cache), so an agent that runs a few functions from
//! every corner of a 10 MB text keeps nearly all of it resident. `hot-code.txt` lists the
//! functions an agent runs from start to idle (recorded by `scripts/hot-code.sh`); a linker
//! script generated from it puts their sections first, in an output section `.text.hot`, and
//! the rest of `.text` after them. Behaviour does not change; only where code lies does.
//!
//! Names the binary does not have (after a toolchain or dependency update changed their
//! hashes) match nothing and are ignored, so a stale list costs memory, never correctness.
//! Debug builds are left alone: their symbols differ and nobody measures their footprint.
//!
//! The same builds pack the binary's relative relocations (below).

use std::fmt::Write as _;
use std::path::PathBuf;

/// The list of hot functions, one mangled symbol name per line, `#` for comments.
const HOT_CODE: &str = "hot-code.txt";

fn main() {
    println!("cargo:rerun-if-changed={HOT_CODE}");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux {
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let list = match std::fs::read_to_string(manifest.join(HOT_CODE)) {
        Ok(list) => list,
        Err(e) => {
            println!("cargo:warning=no hot-code layout for the wren binary: {HOT_CODE}: {e}");
            return;
        }
    };
    let script = linker_script(&list);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("hot-code.ld");
    std::fs::write(&out, script).expect("writing the hot-code linker script to OUT_DIR");
    println!("cargo:rustc-link-arg-bin=wren=-Wl,-T,{}", out.display());
    // A position-independent binary carries one relocation per pointer in its read-only data
    // (vtables, string tables): 24 bytes each in `.rela.dyn`, half a megabyte the loader reads
    // at start and then keeps mapped. Packed (DT_RELR, glibc 2.36 and binutils 2.38 on), the
    // same relocations take a few kilobytes.
    println!("cargo:rustc-link-arg-bin=wren=-Wl,-z,pack-relative-relocs");
}

/// A linker script that gathers the sections of the listed functions into `.text.hot`, placed
/// before `.text`. Each function may sit in `.text.<name>` or, when the compiler judged it
/// cold, `.text.unlikely.<name>`; a local function promoted across codegen units carries a
/// `.llvm.<hash>` suffix that changes with the code, so it is matched by a pattern.
fn linker_script(list: &str) -> String {
    let mut script = String::from("SECTIONS {\n  .text.hot : {\n");
    for name in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        // A mangled name has none of the script's glob or syntax characters; a line that does
        // is not one, and is left out rather than read as a pattern.
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
        {
            println!("cargo:warning={HOT_CODE}: not a symbol name, ignored: {name}");
            continue;
        }
        let _ = writeln!(
            script,
            "    *(.text.{name} .text.{name}.llvm.* .text.unlikely.{name} .text.unlikely.{name}.llvm.*)"
        );
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    script
}
