//! Helpers shared by the CLI integration tests: run the binary, expect JSON, expect a clean error.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn prunekit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prunekit"))
        .args(args)
        .output()
        .expect("the binary runs")
}

pub fn ok(args: &[&str]) -> String {
    let out = prunekit(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {out}"))
}

/// Asserts a clean failure: non-zero exit, no panic, one line of error mentioning every `needles`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let out = prunekit(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: expected a one-line error, got: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: error `{err}` does not mention `{n}`"
        );
    }
}

/// The unsigned integer at JSON pointer `at` (e.g. `/after/params`) of `v`; panics naming it when
/// it is absent, so a comparison cannot pass on a vanished key (`None < Some(_)`, `null == null`).
pub fn uint(v: &serde_json::Value, at: &str) -> u64 {
    v.pointer(at)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at `{at}` in {v}"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
