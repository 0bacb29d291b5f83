//! Ordering: concurrent commits reach every adapter contiguously, in emit order, in one global
//! order.

use std::collections::HashMap;

use emissions_core::{AdapterOptions, Emissions, OverflowPolicy};
use emissions_testing::TestAdapter;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_contiguous_and_identically_ordered_everywhere() {
    const TASKS: usize = 64;
    const PER_COMMIT: usize = 16;
    let adapters: Vec<TestAdapter> = (0..3).map(|_| TestAdapter::new()).collect();
    let recorders: Vec<_> = adapters.iter().map(TestAdapter::recorder).collect();
    let mut builder = Emissions::builder();
    for (i, adapter) in adapters.into_iter().enumerate() {
        // Small batches and queues so consumers interleave with committers.
        let options = AdapterOptions::default()
            .max_demand(1 + i * 7)
            .capacity(64)
            .overflow(OverflowPolicy::Block);
        builder = builder
            .adapter(emissions_core::Named::new(format!("a{i}"), adapter).options(options))
            .unwrap();
    }
    let emissions = builder.start().await.unwrap();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let emissions = emissions.clone();
        tasks.push(tokio::spawn(async move {
            let buffer = emissions.start();
            for seq in 0..PER_COMMIT {
                buffer.emit(format!("t{task}"), &seq).unwrap();
                if seq % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            buffer.commit().await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    emissions.settled().await;

    let sequences: Vec<Vec<(String, u64)>> = recorders
        .iter()
        .map(|r| {
            r.events()
                .iter()
                .map(|e| (e.name().to_owned(), e.payload_as::<u64>().unwrap()))
                .collect()
        })
        .collect();
    assert_eq!(sequences[0].len(), TASKS * PER_COMMIT);
    // Same global order at every adapter.
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[0], sequences[2]);
    // Each commit is contiguous and in emit order.
    let mut seen_commits = HashMap::new();
    for chunk in sequences[0].chunks(PER_COMMIT) {
        let name = &chunk[0].0;
        assert!(
            chunk.iter().all(|(n, _)| n == name),
            "commit interleaved: {chunk:?}"
        );
        let seqs: Vec<u64> = chunk.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, (0..PER_COMMIT as u64).collect::<Vec<_>>());
        assert!(seen_commits.insert(name.clone(), ()).is_none());
    }
    assert_eq!(seen_commits.len(), TASKS);
    assert!(emissions.stats().is_balanced());
}
