//! The forward contract's layer ranges and taps (DESIGN.md §2): stopping after layer E and
//! resuming from E gives the same logits as one full forward; taps return the residual stream
//! entering the requested layers; an early exit applies the final norm and LM head after E.

use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput};

#[test]
fn stop_and_resume_equals_full_forward_and_taps_match() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads");
    let n_layers = model.config().n_layers;
    let h = model.config().hidden_size;
    let tokens: Vec<u32> = (0..24).map(|i| (i * 977 + 5) % 49152).collect();
    let positions: Vec<u32> = (0..24).collect();

    // Full forward with taps at 0, 2, 15 and the top.
    let taps = [0usize, 2, 15, n_layers];
    let mut ws = model.new_workspace(24, 24, 64);
    let mut cache = model.new_cache(64);
    let mut seqs = [SeqInput {
        cache: &mut cache,
        tokens: &tokens,
        positions: &positions,
        tree: None,
        logits: LogitRows::All,
    }];
    model
        .forward(
            &mut ws,
            &mut seqs,
            &ForwardOptions {
                layers: 0..n_layers,
                head: true,
                taps: &taps,
            },
        )
        .unwrap();
    let full: Vec<Vec<f32>> = (0..24).map(|i| ws.logits(i).to_vec()).collect();
    let tapped: Vec<Vec<f32>> = (0..taps.len()).map(|i| ws.tap(i).to_vec()).collect();
    assert_eq!(tapped[0].len(), 24 * h);

    // Stop after layer 15, then resume.
    let mut ws2 = model.new_workspace(24, 24, 64);
    let mut cache2 = model.new_cache(64);
    let mut seqs = [SeqInput {
        cache: &mut cache2,
        tokens: &tokens,
        positions: &positions,
        tree: None,
        logits: LogitRows::None,
    }];
    model
        .forward(
            &mut ws2,
            &mut seqs,
            &ForwardOptions {
                layers: 0..15,
                head: false,
                taps: &[],
            },
        )
        .unwrap();
    assert_eq!(
        ws2.hidden(),
        &tapped[2][..],
        "hidden after layer 15 equals the tap entering layer 15"
    );
    assert_eq!(cache2.layer_len(14), 24);
    assert_eq!(
        cache2.layer_len(15),
        0,
        "layers past the stop are untouched"
    );
    let saved = ws2.hidden().to_vec();
    // Resume in a fresh workspace from the saved hidden states.
    let mut ws3 = model.new_workspace(24, 24, 64);
    ws3.set_hidden(&saved, 24).unwrap();
    let mut seqs = [SeqInput {
        cache: &mut cache2,
        tokens: &tokens,
        positions: &positions,
        tree: None,
        logits: LogitRows::All,
    }];
    model
        .forward(
            &mut ws3,
            &mut seqs,
            &ForwardOptions {
                layers: 15..n_layers,
                head: true,
                taps: &[],
            },
        )
        .unwrap();
    for (i, want) in full.iter().enumerate() {
        assert!(
            ws3.logits(i) == &want[..],
            "row {i}: resumed logits differ from the full forward"
        );
    }
    assert_eq!(cache2.layer_len(n_layers - 1), 24);

    // Early exit after layer 8: logits exist and differ from the full model's.
    let mut cache4 = model.new_cache(64);
    let mut seqs = [SeqInput {
        cache: &mut cache4,
        tokens: &tokens,
        positions: &positions,
        tree: None,
        logits: LogitRows::Last,
    }];
    model
        .forward(
            &mut ws2,
            &mut seqs,
            &ForwardOptions {
                layers: 0..8,
                head: true,
                taps: &[],
            },
        )
        .unwrap();
    assert_eq!(ws2.n_logit_rows(), 1);
    assert!(ws2.logits(0) != &full[23][..]);
    assert!(ws2.logits(0).iter().all(|v| v.is_finite()));
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 1).expect("model loads");
    let mut ws = model.new_workspace(8, 8, 16);
    let mut cache = model.new_cache(16);
    let full = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    };
    let mut check = |tokens: &[u32],
                     positions: &[u32],
                     tree: Option<&[u64]>,
                     opts: &ForwardOptions<'_>,
                     needle: &str| {
        let mut seqs = [SeqInput {
            cache: &mut cache,
            tokens,
            positions,
            tree,
            logits: LogitRows::All,
        }];
        let err = model
            .forward(&mut ws, &mut seqs, opts)
            .expect_err(needle)
            .to_string();
        assert!(err.contains(needle), "{err}");
    };
    check(&[1, 2], &[0], None, &full, "positions");
    check(&[49152], &[0], None, &full, "vocabulary");
    check(&[1; 9], &[0; 9], None, &full, "workspace");
    check(&[1, 2], &[0, 1], Some(&[0b01, 0b01]), &full, "tree mask");
    check(&[1, 2], &[0, 1], Some(&[0b01]), &full, "masks");
    check(
        &[1],
        &[0],
        None,
        &ForwardOptions {
            layers: 0..99,
            head: true,
            taps: &[],
        },
        "layers",
    );
    check(
        &[1],
        &[0],
        None,
        &ForwardOptions {
            layers: 0..2,
            head: true,
            taps: &[77],
        },
        "tap",
    );
    // Filling the context is an error, not a panic.
    let mut small = model.new_cache(4);
    let mut seqs = [SeqInput {
        cache: &mut small,
        tokens: &[1, 2, 3, 4, 5],
        positions: &[0, 1, 2, 3, 4],
        tree: None,
        logits: LogitRows::Last,
    }];
    let err = model
        .forward(&mut ws, &mut seqs, &full)
        .expect_err("context")
        .to_string();
    assert!(err.contains("context"), "{err}");
}
