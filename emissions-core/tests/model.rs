//! Property test: random interleavings of start/emit/flush/commit/terminate/drop over several
//! buffers, checked against a simple model. Only committed or flushed events are delivered, each
//! exactly once per adapter, in order; closed buffers refuse events with a typed error; the
//! accounting balances.

use emissions_core::{AdapterOptions, Buffer, BufferState, Emissions, Error, OverflowPolicy};
use emissions_testing::TestAdapter;
use proptest::prelude::*;

const SLOTS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Emit(usize),
    Flush(usize),
    Commit(usize),
    Terminate(usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        1 => slot.clone().prop_map(Op::Start),
        4 => slot.clone().prop_map(Op::Emit),
        1 => slot.clone().prop_map(Op::Flush),
        1 => slot.clone().prop_map(Op::Commit),
        1 => slot.clone().prop_map(Op::Terminate),
        1 => slot.prop_map(Op::Drop),
    ]
}

/// What the model knows of one slot.
#[derive(Clone, Debug, PartialEq)]
enum Model {
    Empty,
    Open(Vec<u64>),
    Closed(BufferState),
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let a = TestAdapter::new();
    let b = TestAdapter::new();
    let (ra, rb) = (a.recorder(), b.recorder());
    let block = AdapterOptions::default().overflow(OverflowPolicy::Block);
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("a", a).options(block.clone().max_demand(1).capacity(8)),
        )
        .unwrap()
        .adapter(emissions_core::Named::new("b", b).options(block.max_demand(50)))
        .unwrap()
        .start()
        .await
        .unwrap();

    let mut buffers: Vec<Option<Buffer>> = vec![None; SLOTS];
    let mut model = vec![Model::Empty; SLOTS];
    let mut delivered: Vec<u64> = Vec::new();
    let mut next = 0u64;

    for op in ops {
        match op {
            Op::Start(s) => {
                buffers[s] = Some(emissions.start());
                model[s] = Model::Open(Vec::new());
            }
            Op::Drop(s) => {
                buffers[s] = None;
                model[s] = Model::Empty;
            }
            Op::Emit(s) => {
                let Some(buffer) = &buffers[s] else { continue };
                let id = next;
                next += 1;
                let result = buffer.emit("e", &id);
                match &mut model[s] {
                    Model::Open(pending) => {
                        prop_assert!(result.is_ok());
                        pending.push(id);
                    }
                    Model::Closed(state) => {
                        let refused = matches!(result, Err(Error::BufferClosed { state: got }) if got == *state);
                        prop_assert!(refused, "emit into a closed buffer must be refused");
                    }
                    Model::Empty => unreachable!(),
                }
            }
            Op::Flush(s) | Op::Commit(s) | Op::Terminate(s) => {
                let Some(buffer) = &buffers[s] else { continue };
                let result = match op {
                    Op::Flush(_) => buffer.flush().await.map(|r| r.event_count()),
                    Op::Commit(_) => buffer.commit().await.map(|r| r.event_count()),
                    _ => buffer.terminate(),
                };
                match std::mem::replace(&mut model[s], Model::Empty) {
                    Model::Open(pending) => {
                        prop_assert_eq!(result.ok(), Some(pending.len()));
                        model[s] = match op {
                            Op::Flush(_) => {
                                delivered.extend(pending);
                                Model::Open(Vec::new())
                            }
                            Op::Commit(_) => {
                                delivered.extend(pending);
                                Model::Closed(BufferState::Committed)
                            }
                            _ => Model::Closed(BufferState::Terminated),
                        };
                    }
                    closed @ Model::Closed(_) => {
                        let refused = matches!(result, Err(Error::BufferClosed { .. }));
                        prop_assert!(refused, "closed buffer must refuse {:?}", op);
                        model[s] = closed;
                    }
                    Model::Empty => unreachable!(),
                }
                prop_assert_eq!(
                    buffer.state(),
                    match &model[s] {
                        Model::Open(_) => BufferState::Open,
                        Model::Closed(state) => *state,
                        Model::Empty => unreachable!(),
                    }
                );
            }
        }
    }
    drop(buffers);
    emissions.settled().await;
    for recorder in [&ra, &rb] {
        let got: Vec<u64> = recorder
            .events()
            .iter()
            .map(|e| e.payload_as().unwrap())
            .collect();
        prop_assert_eq!(&got, &delivered);
    }
    let report = emissions.shutdown(std::time::Duration::from_secs(5)).await;
    prop_assert!(report.is_balanced());
    for adapter in &report.adapters {
        prop_assert_eq!(adapter.counts.delivered, delivered.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn buffers_deliver_exactly_what_the_model_says(ops in proptest::collection::vec(op(), 0..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
