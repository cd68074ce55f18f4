//! The binary on hostile surroundings and hostile files: a reader that closes the pipe early, and a
//! tiny model file that declares huge tensors. Every case ends without a panic (exit 101) or an
//! abort (out of memory).

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

mod common;
use common::*;

/// A Unix socket whose peer is already closed: every write to it fails with EPIPE, so the test does
/// not depend on how fast the child writes compared with when the reader goes away.
#[cfg(unix)]
fn closed_pipe() -> Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    drop(ours);
    Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// Runs the binary with stdout (and, if `stderr_too`, stderr) writing into a closed pipe.
#[cfg(unix)]
fn run_into_closed_pipe(args: &[&str], stderr_too: bool) -> (ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prunekit"));
    cmd.args(args).stdin(Stdio::null()).stdout(closed_pipe());
    let out = if stderr_too {
        cmd.stderr(closed_pipe());
        (cmd.status().expect("the binary runs"), String::new())
    } else {
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .expect("the binary runs");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    out
}

/// `prunekit info MODEL | head -1`: the reader goes away; the command ends quietly (killed by
/// SIGPIPE like any Unix tool, or a clean exit), never with the panic of a failed `println!`.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    const SIGPIPE: i32 = 13;
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("mlp");
    ok(&["zoo", "create", "digits-mlp", "-o", s(&m)]);
    let cases: [(&[&str], bool); 5] = [
        (&["info", s(&m), "--json"], false),
        (&["info", s(&m)], false),
        (&["zoo", "list"], false),
        (&["eval", s(&m), "--json"], false),
        // the error line itself goes to a closed stderr
        (&["info", "/no/such/model"], true),
    ];
    for (args, stderr_too) in cases {
        let (status, err) = run_into_closed_pipe(args, stderr_too);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_ne!(status.code(), Some(101), "{args:?} panicked: {err}");
        assert!(
            status.signal() == Some(SIGPIPE) || status.code().is_some_and(|c| c <= 1),
            "{args:?}: unexpected end {status:?}: {err}"
        );
    }
}

/// A model directory whose model.json declares an input of `shape` in front of a ReLU (no
/// parameters, so the weights file is an empty safetensors file).
fn model_declaring_input(dir: &Path, shape: &[usize]) {
    std::fs::create_dir_all(dir).unwrap();
    let json = serde_json::json!({
        "format": "prunekit-model",
        "version": 1,
        "name": "huge",
        "inputs": [{ "name": "x", "shape": shape }],
        "outputs": ["relu"],
        "nodes": [{ "name": "relu", "op": { "type": "relu" }, "inputs": ["x"] }],
    });
    std::fs::write(dir.join("model.json"), json.to_string()).unwrap();
    // an empty safetensors file: an 8-byte header length, then the header `{}` padded to 8 bytes
    let mut st = 8u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}      ");
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
}

/// A 1 KB model.json declaring an input of 65536 x 65536 elements: `info`, `eval` (with latency)
/// and `prune --verify` fail with one line naming the input, before allocating anything.
#[test]
fn a_tiny_file_declaring_a_huge_input_is_an_error_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("huge");
    model_declaring_input(&m, &[65536, 65536]);
    let size = std::fs::metadata(m.join("model.json")).unwrap().len();
    assert!(size < 1024, "model.json is {size} bytes");
    fails_with(&["info", s(&m)], &["model.json", "`x`", "limit"]);
    fails_with(
        &["eval", s(&m), "--data", "digits", "--latency-batch", "1"],
        &["model.json", "`x`", "limit"],
    );
    fails_with(
        &[
            "prune",
            s(&m),
            "-o",
            s(&tmp.path().join("out")),
            "--structured",
            "0.5",
            "--verify",
        ],
        &["model.json", "`x`", "limit"],
    );
}
