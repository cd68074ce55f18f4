//! A short fuzz run of every importer in the suite (the long one: `examples/fuzz.rs`): no panic,
//! no allocation beyond what the input's size justifies.

use prunekit_io::fuzz::{allocation_bound, run, standard_targets, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn mutated_files_never_panic_or_over_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let targets = standard_targets(dir.path()).unwrap();
    let mut over = Vec::new();
    ALLOC.take_largest();
    let report = run(&targets, 300, 7, dir.path(), |t, len| {
        let largest = ALLOC.take_largest();
        if largest > allocation_bound(len) {
            over.push((t, len, largest));
        }
    });
    assert_eq!(report.total(), 300 * targets.len() as u64);
    assert!(report.panics.is_empty(), "panics: {:?}", report.panics);
    assert!(over.is_empty(), "allocations beyond the bound: {over:?}");
    // the harness does reach the readers' success paths, not only their first check
    for (t, ok) in &report.accepted {
        if *t != "detect" {
            eprintln!("{t}: {ok} of 300 mutated inputs accepted");
        }
    }
}
