//! Built-in architectures, each built with the graph builder from a seed (PyTorch's default inits).

use prunekit_graph::{Graph, GraphBuilder, GraphError, Result, Value};

/// (name, input shape, description) of every built-in architecture.
pub const MODELS: &[(&str, &str)] = &[
    ("digits-mlp", "MLP 64-128-64-10 for the 8x8 digits"),
    (
        "digits-cnn",
        "CNN for the 8x8 digits: conv 16, conv 32, max-pool, linear 64, linear 10 (the demo)",
    ),
    (
        "fashion-cnn",
        "CNN for 28x28 Fashion-MNIST: conv 32, pool, conv 64, pool, linear 128, linear 10",
    ),
    (
        "reference-cnn",
        "the runtime benchmark CNN: 3x32x32, conv 16 + BN + pool, conv 32 + BN + pool, linear 10",
    ),
];

/// Names of the built-in architectures.
pub fn names() -> Vec<&'static str> {
    MODELS.iter().map(|(n, _)| *n).collect()
}

/// conv -> batch norm -> relu, the basic block of the CNNs here.
fn conv_bn_relu(b: &mut GraphBuilder, x: &Value, out: usize) -> Result<Value> {
    let h = b.conv2d(x, out, 3, 1, 1)?;
    let h = b.batch_norm(&h)?;
    b.relu(&h)
}

/// A basic residual block: conv-BN-ReLU-conv-BN plus the shortcut (identity, or a strided 1x1
/// conv + BN when the shape changes), then ReLU.
fn basic_block(b: &mut GraphBuilder, x: &Value, out: usize, stride: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, out, 3, stride, 1)?;
    let h = b.batch_norm(&h)?;
    let h = b.relu(&h)?;
    let h = b.conv2d_no_bias(&h, out, 3, 1, 1)?;
    let h = b.batch_norm(&h)?;
    let short = if stride != 1 || x.shape[0] != out {
        let s = b.conv2d_no_bias(x, out, 1, stride, 0)?;
        b.batch_norm(&s)?
    } else {
        x.clone()
    };
    let y = b.add(&h, &short)?;
    b.relu(&y)
}

/// CIFAR ResNet (He et al. 2016) with `n` blocks per stage: 6n + 2 layers.
fn cifar_resnet(b: &mut GraphBuilder, n: usize) -> Result<Value> {
    let x = b.input("image", &[3, 32, 32]);
    let h = b.conv2d_no_bias(&x, 16, 3, 1, 1)?;
    let h = b.batch_norm(&h)?;
    let mut h = b.relu(&h)?;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            h = basic_block(b, &h, width, stride)?;
        }
    }
    let h = b.global_avg_pool(&h)?;
    b.named("classifier").linear(&h, 10)
}

/// Builds a built-in architecture by name with seeded weights.
pub fn build(name: &str, seed: u64) -> Result<Graph> {
    let mut b = GraphBuilder::new(name, seed);
    b.meta("architecture", serde_json::json!(name));
    let y = match name {
        "digits-mlp" => {
            let x = b.input("image", &[1, 8, 8]);
            let h = b.flatten(&x)?;
            let h = b.linear(&h, 128)?;
            let h = b.relu(&h)?;
            let h = b.linear(&h, 64)?;
            let h = b.relu(&h)?;
            b.named("classifier").linear(&h, 10)?
        }
        "digits-cnn" => {
            let x = b.input("image", &[1, 8, 8]);
            let h = conv_bn_relu(&mut b, &x, 16)?;
            let h = conv_bn_relu(&mut b, &h, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            let h = b.linear(&h, 64)?;
            let h = b.relu(&h)?;
            b.named("classifier").linear(&h, 10)?
        }
        "fashion-cnn" => {
            let x = b.input("image", &[1, 28, 28]);
            let h = conv_bn_relu(&mut b, &x, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = conv_bn_relu(&mut b, &h, 64)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            let h = b.linear(&h, 128)?;
            let h = b.relu(&h)?;
            let h = b.dropout(&h, 0.25)?;
            b.named("classifier").linear(&h, 10)?
        }
        "reference-cnn" => {
            let x = b.input("image", &[3, 32, 32]);
            let h = conv_bn_relu(&mut b, &x, 16)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = conv_bn_relu(&mut b, &h, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            b.named("classifier").linear(&h, 10)?
        }
        "resnet20" => cifar_resnet(&mut b, 3)?,
        "resnet56" => cifar_resnet(&mut b, 9)?,
        other => {
            return Err(GraphError::Invalid(format!(
                "unknown architecture `{other}`; known: {}",
                names().join(", ")
            )))
        }
    };
    b.finish(&[&y])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_builds_and_validates() {
        for name in names() {
            let g = build(name, 0).unwrap();
            g.validate().unwrap();
            assert!(g.param_count() > 0 && g.macs().unwrap() > 0, "{name}");
        }
    }

    #[test]
    fn reference_cnn_counts_match_hand_computation() {
        let g = build("reference-cnn", 0).unwrap();
        // conv1 16*3*9+16, bn 32, conv2 32*16*9+32, bn 64, linear 2048*10+10
        assert_eq!(g.param_count(), 448 + 32 + 4640 + 64 + 20490);
        let macs = 16 * 32 * 32 * 3 * 9 + 32 * 16 * 16 * 16 * 9 + 2048 * 10;
        assert_eq!(g.macs().unwrap(), macs as u64);
    }

    #[test]
    fn every_trainable_parameter_of_every_model_gets_a_gradient() {
        use prunekit_graph::{param_grads, Executor, Mode};
        for name in names() {
            let g = build(name, 1).unwrap();
            let mut dims = vec![4];
            dims.extend_from_slice(&g.inputs[0].shape);
            let x = candle_core::Tensor::randn(0f32, 1.0, dims, &candle_core::Device::Cpu).unwrap();
            let y = Executor::new(0)
                .run(&g, &[x], Mode::TRAIN, None)
                .unwrap()
                .remove(0);
            let w = candle_core::Tensor::randn(0f32, 1.0, y.shape(), y.device()).unwrap();
            let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
            let got = param_grads(&g, &grads);
            for (n, k, _) in g.trainable() {
                let gr = got
                    .get(&(n.name.clone(), k.clone()))
                    .unwrap_or_else(|| panic!("{name}: no gradient for {}.{k}", n.name));
                let mag = gr
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(mag > 0.0, "{name}: zero gradient for {}.{k}", n.name);
            }
        }
    }

    #[test]
    fn resnets_have_the_published_sizes() {
        // ResNet-20 has 269,722 parameters and ResNet-56 ~0.85M (He et al. 2016, option-A shortcuts;
        // the 1x1 projections here add 16*32 + 32*64 weights and their BN)
        let r20 = build("resnet20", 0).unwrap();
        let r56 = build("resnet56", 0).unwrap();
        assert_eq!(r20.param_count(), 269_722 + 512 + 2048 + 2 * (32 + 64));
        assert!(
            (850_000..870_000).contains(&r56.param_count()),
            "{}",
            r56.param_count()
        );
        assert_eq!(
            r20.nodes
                .iter()
                .filter(|n| n.op.type_name() == "conv2d")
                .count(),
            19 + 2
        );
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = build("resnet-9000", 0).unwrap_err().to_string();
        assert!(err.contains("digits-cnn"), "{err}");
    }
}
