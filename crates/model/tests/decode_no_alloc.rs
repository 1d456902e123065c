//! Once warmed up, a decode step (forward + sampling) allocates nothing on the heap.

use peregrine_model::{ForwardOptions, LogitRows, Model, Sampler, SamplingParams, SeqInput};
use peregrine_testkit::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn decode_steps_do_not_allocate() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads");
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    };
    let mut ws = model.new_workspace(16, 1, 256);
    let mut cache = model.new_cache(256);
    let mut history: Vec<u32> = Vec::with_capacity(256);
    let prompt: Vec<u32> = (0..16).map(|i| 100 + i).collect();
    let positions: Vec<u32> = (0..16).collect();
    let mut seqs = [SeqInput {
        cache: &mut cache,
        tokens: &prompt,
        positions: &positions,
        tree: None,
        logits: LogitRows::Last,
    }];
    model.forward(&mut ws, &mut seqs, &opts).unwrap();
    history.extend_from_slice(&prompt);
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 1,
        ..Default::default()
    };
    let mut sampler = Sampler::new(params, model.config().vocab_size);
    let mut step = |n: usize, history: &mut Vec<u32>, cache: &mut peregrine_model::KvCache| {
        for _ in 0..n {
            let next = sampler.sample(ws.logits(0), history);
            history.push(next);
            let pos = [history.len() as u32 - 1];
            let mut seqs = [SeqInput {
                cache: &mut *cache,
                tokens: &[next],
                positions: &pos,
                tree: None,
                logits: LogitRows::Last,
            }];
            model.forward(&mut ws, &mut seqs, &opts).unwrap();
        }
    };
    step(4, &mut history, &mut cache); // warm-up
    let before = ALLOC.n_allocs();
    step(64, &mut history, &mut cache);
    let n = ALLOC.n_allocs() - before;
    assert_eq!(n, 0, "{n} heap allocations in 64 decode steps");
}
