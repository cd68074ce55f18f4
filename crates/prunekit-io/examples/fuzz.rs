//! The long fuzz run of every importer: `cargo run --release -p prunekit-io --example fuzz --
//! [INPUTS_PER_TARGET (default 150000)] [SEED]`. Prints, per format, the inputs tried and accepted,
//! every panic (the input is kept) and every allocation beyond `allocation_bound`; exits non-zero on
//! any finding.

use prunekit_io::fuzz::{allocation_bound, run, standard_targets, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(150_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let targets = standard_targets(dir.path()).expect("seeds");
    let mut over = Vec::new();
    let start = std::time::Instant::now();
    ALLOC.take_largest();
    let report = run(&targets, n, seed, dir.path(), |t, len| {
        let largest = ALLOC.take_largest();
        if largest > allocation_bound(len) {
            over.push((t, len, largest));
        }
    });
    println!(
        "{} inputs in {:.0} s (seed {seed})",
        report.total(),
        start.elapsed().as_secs_f64()
    );
    for ((t, n), (_, ok)) in report.inputs.iter().zip(&report.accepted) {
        println!("  {t:15} {n:>9} inputs, {ok:>8} accepted");
    }
    for (t, p, m) in &report.panics {
        println!("PANIC {t}: {m} (input kept at {})", p.display());
    }
    let contained =
        prunekit_io::pytorch::CONTAINED_PANICS.load(std::sync::atomic::Ordering::Relaxed);
    println!("panics inside candle's pickle reader, contained as errors: {contained}");
    for (t, len, a) in &over {
        println!("ALLOCATION {t}: {a} bytes for a {len}-byte input");
    }
    if !report.panics.is_empty() {
        // keep the inputs that panicked
        let keep = dir.keep();
        println!("inputs kept in {}", keep.display());
    }
    if report.panics.is_empty() && over.is_empty() {
        println!("0 panics, 0 allocations beyond 16 x input + 16 MiB");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
