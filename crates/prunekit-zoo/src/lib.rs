//! Built-in architectures, each built with the graph builder from a seed (PyTorch's default inits).
//!
//! Every classifier's last layer is named `classifier`; the language model's is `lm_head`. Shapes
//! are per sample (no batch axis): images [C, H, W], feature sequences [T, F], token ids [T],
//! tabular feature vectors [F].

use prunekit_graph::{Graph, GraphBuilder, GraphError, Result, Value};

/// (name, description) of every built-in architecture, in the order `prunekit zoo list` shows them.
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
    (
        "resnet20",
        "CIFAR ResNet-20 on 3x32x32: 3 stages of 3 basic blocks (16, 32, 64 channels)",
    ),
    (
        "resnet56",
        "CIFAR ResNet-56 on 3x32x32: 3 stages of 9 basic blocks (16, 32, 64 channels)",
    ),
    (
        "densenet",
        "DenseNet-style CNN on 3x32x32: stem 24, 2 dense blocks of 4 layers (growth 12), transition",
    ),
    (
        "mobilenet",
        "MobileNet-style CNN on 3x32x32: depthwise-separable blocks 32-64-64, 2 inverted residuals",
    ),
    (
        "lstm-classifier",
        "sequence classifier on 32x20 frames (e.g. MFCC): LSTM 48, LSTM 48 (last step), linear 10",
    ),
    (
        "gru-classifier",
        "sequence classifier on 32x20 frames (e.g. MFCC): GRU 48, GRU 48 (last step), linear 10",
    ),
    (
        "bert-tiny",
        "BERT-like encoder on 32 token ids (vocab 1000): dim 64, 2 post-LN layers, 4 heads, 2 classes",
    ),
    (
        "gru-text",
        "text classifier on 32 token ids (vocab 1000): embedding 64, GRU 64 (last step), 2 classes",
    ),
    (
        "llama-tiny",
        "Llama-like decoder on 32 token ids (vocab 1000): dim 64, 2 layers, GQA 8/2 heads, RoPE",
    ),
    (
        "llama-tiny-tied",
        "llama-tiny with lm_head's weight tied to the embedding table (one tensor, as in SmolLM2 / GPT-2)",
    ),
    (
        "llama-small",
        "Llama-like decoder on 128 token ids (vocab 2048): dim 128, 4 layers, GQA 4/2 heads of 32, SwiGLU 384, tied lm_head (1.05M parameters; e.g. the Shakespeare GPT)",
    ),
    (
        "ncf",
        "NeuMF on (user, item) ids (vocab 671, 9066): shared embeddings 32, GMF + MLP 64-32-16, 1 output",
    ),
    (
        "gru-recommender",
        "next-item GRU on 20 item ids (vocab 9067 with PAD): embedding 64, GRU 64, 9066 items",
    ),
    (
        "q-mlp",
        "Q-network for reinforcement learning on an observation [F] (default 4, CartPole): linear 128, linear 128, one Q-value per action (default 2)",
    ),
    (
        "actor-mlp",
        "deterministic policy (DDPG actor) on an observation [F] (default 3, Pendulum): linear 128, linear 128, one action per output (default 1) bounded by tanh",
    ),
    (
        "yolo-tiny",
        "single-stage anchor-free detector (YOLOX / CenterNet style) on [1, 96, 96]: conv backbone to stride 8 (16-32-32-64-64), a neck that upsamples and concatenates back to stride 4, a 1x1 head of 5 + C maps (objectness, centre offset, log size, classes); e.g. Fashion-MNIST canvases",
    ),
    (
        "mlp",
        "MLP for tabular features [F] (default 16; e.g. credit risk): linear 64, linear 32, linear 2",
    ),
];

/// Names of the built-in architectures.
pub fn names() -> Vec<&'static str> {
    MODELS.iter().map(|(n, _)| *n).collect()
}

/// Options of [`build_with`]; `None` keeps the model's own input shape and number of classes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZooOptions {
    /// per-sample input shape: [C, H, W] for the image models, [T, F] for the recurrent
    /// classifiers, [T] (sequence length) for the token models and `gru-recommender`, [F]
    /// (features) for `mlp`, [] for `ncf` (one user id and one item id)
    pub input: Option<Vec<usize>>,
    /// output classes; for `llama-tiny` the vocabulary size (its embedding and `lm_head`)
    pub classes: Option<usize>,
    /// sizes of the id vocabularies the model embeds, one per embedded input: `[V]` for the
    /// token classifiers (`bert-tiny`, `gru-text`: the token vocabulary); models with several id
    /// inputs take them in input order (`ncf`: `[users, items]`; `gru-recommender`: `[items + 1]`,
    /// the items and a PAD id). `None` keeps the model's own.
    pub vocab: Option<Vec<usize>>,
}

/// What kind of input a model takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Image,
    Sequence,
    Tokens,
    /// an item-id history [T] (input `history`)
    History,
    /// one user id and one item id (inputs `user` and `item`, shape [] each)
    UserItem,
    /// A float feature vector (tabular data), input `"features"`.
    Vector,
}

impl Form {
    fn describe(self) -> &'static str {
        match self {
            Form::Image => "[C, H, W] (channels, height, width)",
            Form::Sequence => "[T, F] (time steps, features per step)",
            Form::Tokens => "[T] (the number of token ids)",
            Form::History => "[T] (the number of past item ids)",
            Form::UserItem => "[] (one user id and one item id per sample)",
            Form::Vector => "[F] (the number of features)",
        }
    }
    fn rank(self) -> usize {
        match self {
            Form::Image => 3,
            Form::Sequence => 2,
            Form::Tokens | Form::History | Form::Vector => 1,
            Form::UserItem => 0,
        }
    }
}

/// The input form, default input shape and default number of classes of a model.
fn spec(name: &str) -> Option<(Form, &'static [usize], usize)> {
    Some(match name {
        "digits-mlp" | "digits-cnn" => (Form::Image, &[1, 8, 8], 10),
        "fashion-cnn" => (Form::Image, &[1, 28, 28], 10),
        "yolo-tiny" => (Form::Image, &[1, 96, 96], 10),
        "reference-cnn" | "resnet20" | "resnet56" | "densenet" | "mobilenet" => {
            (Form::Image, &[3, 32, 32], 10)
        }
        "lstm-classifier" | "gru-classifier" => (Form::Sequence, &[32, 20], 10),
        "bert-tiny" | "gru-text" => (Form::Tokens, &[32], 2),
        "llama-tiny" | "llama-tiny-tied" => (Form::Tokens, &[32], LLAMA_VOCAB),
        "llama-small" => (Form::Tokens, &[128], 2048),
        "ncf" => (Form::UserItem, &[], 1),
        "gru-recommender" => (Form::History, &[20], MOVIELENS_ITEMS),
        "mlp" => (Form::Vector, &[16], 2),
        "q-mlp" => (Form::Vector, &[4], 2),
        "actor-mlp" => (Form::Vector, &[3], 1),
        _ => return None,
    })
}

const BERT_VOCAB: usize = 1000;
const GRU_TEXT_VOCAB: usize = 1000;
const LLAMA_VOCAB: usize = 1000;
/// Users and movies of the shared MovieLens file: the default vocabularies of `ncf` and
/// `gru-recommender`.
const MOVIELENS_USERS: usize = 671;
const MOVIELENS_ITEMS: usize = 9066;

/// What the `classes` option sets for a model.
fn classes_word(name: &str) -> &'static str {
    if name.starts_with("llama-") {
        "the vocabulary size"
    } else {
        "the number of classes"
    }
}

/// The options resolved against the model's defaults, or a clear error naming the model.
fn resolve(name: &str, opts: &ZooOptions) -> Result<(Form, Vec<usize>, usize)> {
    let Some((form, default_input, default_classes)) = spec(name) else {
        return Err(GraphError::Invalid(format!(
            "unknown architecture `{name}`; known: {}",
            names().join(", ")
        )));
    };
    let input = match &opts.input {
        None => default_input.to_vec(),
        Some(s) if s.len() != form.rank() || s.contains(&0) => {
            return Err(GraphError::Invalid(format!(
                "architecture `{name}`: input shape {s:?} is not of the form {} with positive \
                 sizes (default {default_input:?})",
                form.describe()
            )))
        }
        Some(s) => s.clone(),
    };
    let classes = match opts.classes {
        Some(0) => {
            return Err(GraphError::Invalid(format!(
                "architecture `{name}`: {} must be positive (default {default_classes})",
                classes_word(name)
            )))
        }
        Some(c) => c,
        None => default_classes,
    };
    Ok((form, input, classes))
}

/// conv -> batch norm -> relu, the basic block of the CNNs here.
fn conv_bn_relu(b: &mut GraphBuilder, x: &Value, out: usize) -> Result<Value> {
    let h = b.conv2d(x, out, 3, 1, 1)?;
    let h = b.batch_norm(&h)?;
    b.relu(&h)
}

/// batch norm -> relu, the pre-activation of DenseNet and the activation of MobileNet.
fn bn_relu(b: &mut GraphBuilder, x: &Value) -> Result<Value> {
    let h = b.batch_norm(x)?;
    b.relu(&h)
}

/// A basic residual block: conv-BN-ReLU-conv-BN plus the shortcut (identity, or a strided 1x1
/// conv + BN when the shape changes), then ReLU.
fn basic_block(b: &mut GraphBuilder, x: &Value, out: usize, stride: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, out, 3, stride, 1)?;
    let h = bn_relu(b, &h)?;
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
fn cifar_resnet(b: &mut GraphBuilder, x: &Value, n: usize, classes: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, 16, 3, 1, 1)?;
    let mut h = bn_relu(b, &h)?;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            h = basic_block(b, &h, width, stride)?;
        }
    }
    let h = b.global_avg_pool(&h)?;
    b.named("classifier").linear(&h, classes)
}

/// conv (stride `stride`) -> batch norm -> relu.
fn conv_bn_relu_s(
    b: &mut GraphBuilder,
    x: &Value,
    out: usize,
    kernel: usize,
    stride: usize,
) -> Result<Value> {
    let h = b.conv2d_no_bias(x, out, kernel, stride, kernel / 2)?;
    bn_relu(b, &h)
}

/// The prior probability of an object at a cell at initialisation (RetinaNet, Lin et al. 2017
/// section 4.1): the objectness bias starts at `-ln((1 - pi) / pi)`, so the focal loss of the
/// many empty cells does not swamp the first steps.
const OBJECTNESS_PRIOR: f64 = 0.01;

/// The `yolo-tiny` detector: a stride-8 backbone, an FPN-style neck (1x1 lateral conv, nearest
/// upsampling x2, concatenation with the stride-4 features, 3x3 conv) and a 1x1 `head` of
/// `5 + classes` maps (see `prunekit_data::TaskKind::Detection`). Output `[5 + C, H/4, W/4]`.
fn yolo_tiny(b: &mut GraphBuilder, x: &Value, classes: usize) -> Result<Value> {
    if let [_, h, w] = x.shape[..] {
        if h % 8 != 0 || w % 8 != 0 {
            return Err(GraphError::Invalid(format!(
                "yolo-tiny needs an image side divisible by 8 (its stride-8 features are upsampled \
                 and concatenated with the stride-4 ones), got {h}x{w}"
            )));
        }
    }
    let h = conv_bn_relu_s(b, x, 16, 3, 2)?;
    let h = conv_bn_relu_s(b, &h, 32, 3, 2)?;
    let p3 = conv_bn_relu_s(b, &h, 32, 3, 1)?;
    let h = conv_bn_relu_s(b, &p3, 64, 3, 2)?;
    let p4 = conv_bn_relu_s(b, &h, 64, 3, 1)?;
    let lateral = conv_bn_relu_s(b, &p4, 32, 1, 1)?;
    let up = b.node(
        prunekit_graph::ops::Resize::new(prunekit_graph::ops::ResizeMode::Nearest, 2.0),
        &[&lateral],
    )?;
    let h = b.concat(&[&up, &p3], 0)?;
    let h = conv_bn_relu_s(b, &h, 32, 3, 1)?;
    b.named("head").conv2d(&h, 5 + classes, 1, 1, 0)
}

/// Sets the objectness bias (channel 0 of `head.bias`) to the [`OBJECTNESS_PRIOR`].
fn init_objectness_prior(g: &mut Graph) -> Result<()> {
    let p = g
        .node_mut("head")?
        .params
        .get_mut("bias")
        .ok_or_else(|| GraphError::Invalid("the detector's head has no bias".into()))?;
    let old = p.value.as_tensor();
    let mut v = old.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    v[0] = (-((1.0 - OBJECTNESS_PRIOR) / OBJECTNESS_PRIOR).ln()) as f32;
    let t = candle_core::Tensor::from_vec(v, old.dims(), old.device())?.to_dtype(old.dtype())?;
    p.value.set(&t)?;
    Ok(())
}

/// A dense block: every layer (BN, ReLU, 3x3 conv of `growth` channels) sees the concatenation of
/// the block input and all earlier layers' outputs.
fn dense_block(b: &mut GraphBuilder, x: &Value, layers: usize, growth: usize) -> Result<Value> {
    let mut h = x.clone();
    for _ in 0..layers {
        let y = bn_relu(b, &h)?;
        let y = b.conv2d_no_bias(&y, growth, 3, 1, 1)?;
        h = b.concat(&[&h, &y], 0)?;
    }
    Ok(h)
}

/// DenseNet-style CNN (Huang et al. 2017): stem 24, two dense blocks of 4 layers with growth 12
/// and a halving transition between them.
fn densenet(b: &mut GraphBuilder, x: &Value, classes: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, 24, 3, 1, 1)?;
    let h = dense_block(b, &h, 4, 12)?;
    let t = bn_relu(b, &h)?;
    let t = b.conv2d_no_bias(&t, h.shape[0] / 2, 1, 1, 0)?;
    let t = b.avg_pool2d(&t, 2, 2)?;
    let h = dense_block(b, &t, 4, 12)?;
    let h = bn_relu(b, &h)?;
    let h = b.global_avg_pool(&h)?;
    b.named("classifier").linear(&h, classes)
}

/// Depthwise 3x3 conv (groups = channels) + BN + ReLU.
fn depthwise_bn_relu(b: &mut GraphBuilder, x: &Value, stride: usize) -> Result<Value> {
    let c = x.shape[0];
    let h = b.conv2d_grouped(x, c, 3, stride, 1, c)?;
    bn_relu(b, &h)
}

/// 1x1 conv without bias + BN.
fn pointwise_bn(b: &mut GraphBuilder, x: &Value, out: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, out, 1, 1, 0)?;
    b.batch_norm(&h)
}

/// MobileNet-style CNN: depthwise-separable blocks (Howard et al. 2017) then MobileNetV2 inverted
/// residuals (Sandler et al. 2018: expand x4, depthwise, linear projection, add the input).
fn mobilenet(b: &mut GraphBuilder, x: &Value, classes: usize) -> Result<Value> {
    let h = b.conv2d_no_bias(x, 16, 3, 1, 1)?;
    let mut h = bn_relu(b, &h)?;
    for (width, stride) in [(32, 1), (64, 2), (64, 1)] {
        let d = depthwise_bn_relu(b, &h, stride)?;
        let p = pointwise_bn(b, &d, width)?;
        h = b.relu(&p)?;
    }
    for _ in 0..2 {
        let c = h.shape[0];
        let e = pointwise_bn(b, &h, 4 * c)?;
        let e = b.relu(&e)?;
        let d = depthwise_bn_relu(b, &e, 1)?;
        let p = pointwise_bn(b, &d, c)?;
        h = b.add(&p, &h)?;
    }
    let h = b.global_avg_pool(&h)?;
    b.named("classifier").linear(&h, classes)
}

/// Two stacked recurrent layers of 48 units (the second keeps only the last step) and a linear
/// classifier.
fn recurrent_classifier(
    b: &mut GraphBuilder,
    x: &Value,
    gru: bool,
    classes: usize,
) -> Result<Value> {
    let layer = |b: &mut GraphBuilder, x: &Value, seq: bool| {
        if gru {
            b.gru(x, 48, seq)
        } else {
            b.lstm(x, 48, seq)
        }
    };
    let h = layer(b, x, true)?;
    let h = layer(b, &h, false)?;
    b.named("classifier").linear(&h, classes)
}

/// BERT-like encoder (Devlin et al. 2019), tiny: token + learned positional embeddings, LayerNorm,
/// two post-LN layers (attention 4x16, GELU MLP 128), a tanh pooler over the first token and a
/// linear classifier.
fn bert_tiny(b: &mut GraphBuilder, ids: &Value, classes: usize, vocab: usize) -> Result<Value> {
    let (dim, heads, head_dim, ffn) = (64, 4, 16, 128);
    let steps = ids.shape[0];
    let h = b.embedding(ids, vocab, dim)?;
    let h = b.positional_embedding(&h, steps)?;
    let mut h = b.layer_norm(&h)?;
    for _ in 0..2 {
        let a = b.attention(&h, heads, heads, head_dim, false, None)?;
        let r = b.add(&h, &a)?;
        h = b.layer_norm(&r)?;
        let f = b.linear(&h, ffn)?;
        let f = b.gelu(&f)?;
        let f = b.linear(&f, dim)?;
        let r = b.add(&h, &f)?;
        h = b.layer_norm(&r)?;
    }
    // the first token ([CLS]) represents the sequence
    let first = b.split(&h, 0, &[1])?.remove(0);
    let p = b.flatten(&first)?;
    let p = b.named("pooler").linear(&p, dim)?;
    let p = b.tanh(&p)?;
    b.named("classifier").linear(&p, classes)
}

/// GRU text classifier: token ids [T] -> embedding [T, 64] -> GRU 64 (Cho et al. 2014), last
/// step [64] -> `classifier` [classes]. The last step reads whatever the sequence ends with, so
/// with padded inputs pad on the left (the GRU has no mask).
fn gru_text(b: &mut GraphBuilder, ids: &Value, classes: usize, vocab: usize) -> Result<Value> {
    let h = b.embedding(ids, vocab, 64)?;
    let h = b.gru(&h, 64, false)?;
    b.named("classifier").linear(&h, classes)
}

/// The sizes of a Llama-like decoder.
struct LlamaSize {
    dim: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
}

/// `llama-tiny`: 8 query heads sharing 2 key/value heads of 8, SwiGLU 176, 2 layers of 64.
const LLAMA_TINY: LlamaSize = LlamaSize {
    dim: 64,
    layers: 2,
    heads: 8,
    kv_heads: 2,
    head_dim: 8,
    ffn: 176,
};

/// `llama-small`: 4 query heads sharing 2 key/value heads of 32, SwiGLU 384, 4 layers of 128.
const LLAMA_SMALL: LlamaSize = LlamaSize {
    dim: 128,
    layers: 4,
    heads: 4,
    kv_heads: 2,
    head_dim: 32,
    ffn: 384,
};

/// Llama-like decoder (Touvron et al. 2023): pre-RMSNorm layers of causal grouped-query
/// attention with RoPE (base 10,000) and a SwiGLU MLP, a final RMSNorm and `lm_head` over the
/// vocabulary: [T, vocab]. With `tied`, `lm_head` borrows its weight from the embedding table
/// `embedding1` (`Node::shared`: one [vocab, dim] tensor for both, as Llama 3.2 1B, SmolLM2 and
/// GPT-2 tie `lm_head.weight` to the input embeddings).
fn llama(
    b: &mut GraphBuilder,
    ids: &Value,
    vocab: usize,
    s: &LlamaSize,
    tied: bool,
) -> Result<Value> {
    let mut x = b.named("embedding1").embedding(ids, vocab, s.dim)?;
    for _ in 0..s.layers {
        let h = b.rms_norm(&x)?;
        let a = b.attention(&h, s.heads, s.kv_heads, s.head_dim, true, Some(10000.0))?;
        x = b.add(&x, &a)?;
        let h = b.rms_norm(&x)?;
        let gate = b.linear(&h, s.ffn)?;
        let gate = b.silu(&gate)?;
        let up = b.linear(&h, s.ffn)?;
        let m = b.mul(&gate, &up)?;
        let down = b.linear(&m, s.dim)?;
        x = b.add(&x, &down)?;
    }
    let h = b.rms_norm(&x)?;
    b.named("lm_head");
    if tied {
        b.shared_param("weight", "embedding1", "weight");
    }
    b.linear(&h, vocab)
}

/// NeuMF (He et al. 2017, "Neural Collaborative Filtering", Fig. 3) with one user and one item
/// embedding (32) shared by both towers, so that pruning the embedding width removes the same
/// dimensions from both: u = E_user[user], v = E_item[item]; GMF = u * v; MLP = 64-32-16 ReLU
/// over [u, v]; `classifier` over [GMF, MLP] (48 -> classes: 1 rating, or 2 for the
/// interacted / not logits of ranking). Inputs: one user id and one item id per sample, below
/// `vocab = [users, items]` (default the MovieLens 671 and 9066).
fn ncf(
    b: &mut GraphBuilder,
    user: &Value,
    item: &Value,
    classes: usize,
    vocab: &[usize],
) -> Result<Value> {
    let (users, items) = match *vocab {
        [] => (MOVIELENS_USERS, MOVIELENS_ITEMS),
        [u, i] => (u, i),
        _ => {
            return Err(GraphError::Invalid(format!(
                "ncf takes two vocabularies [users, items], got {vocab:?}"
            )))
        }
    };
    let dim = 32;
    let u = b.named("user_embedding").embedding(user, users, dim)?;
    let v = b.named("item_embedding").embedding(item, items, dim)?;
    let gmf = b.named("gmf").mul(&u, &v)?;
    let mut h = b.concat(&[&u, &v], 0)?;
    for width in [64, 32, 16] {
        h = b.linear(&h, width)?;
        h = b.relu(&h)?;
    }
    let h = b.concat(&[&gmf, &h], 0)?;
    b.named("classifier").linear(&h, classes)
}

/// A GRU next-item recommender (Hidasi et al. 2016, "Session-based Recommendations with
/// Recurrent Neural Networks"): item-id history [T] -> embedding 64 over `vocab[0]` ids (default
/// `classes + 1`: the items and a PAD id) -> GRU 64 (last step) -> `classifier` over the
/// `classes` items.
fn gru_recommender(
    b: &mut GraphBuilder,
    history: &Value,
    classes: usize,
    vocab: &[usize],
) -> Result<Value> {
    let ids = vocab.first().copied().unwrap_or(classes + 1);
    let h = b.named("item_embedding").embedding(history, ids, 64)?;
    let h = b.gru(&h, 64, false)?;
    b.named("classifier").linear(&h, classes)
}

/// The tabular MLP on features `[F]`: linear 64 -> ReLU -> linear 32 -> ReLU -> `classifier`
/// linear `classes` (logits `[classes]`; for a binary task the score is softmax class 1).
fn tabular_mlp(b: &mut GraphBuilder, x: &Value, classes: usize) -> Result<Value> {
    let h = b.linear(x, 64)?;
    let h = b.relu(&h)?;
    let h = b.linear(&h, 32)?;
    let h = b.relu(&h)?;
    b.named("classifier").linear(&h, classes)
}

/// A DQN Q-network (Mnih et al. 2015, with the fully connected torso of the low-dimensional
/// tasks): observation [F] -> linear 128 -> ReLU -> linear 128 -> ReLU -> `classifier`, one
/// Q-value per action. Also DDPG's critic (input: observation and action concatenated, one
/// output) and, with a final tanh (`action`), its actor (`actor-mlp`).
fn q_mlp(b: &mut GraphBuilder, x: &Value, actions: usize) -> Result<Value> {
    let h = b.linear(x, 128)?;
    let h = b.relu(&h)?;
    let h = b.linear(&h, 128)?;
    let h = b.relu(&h)?;
    b.named("classifier").linear(&h, actions)
}

/// Builds a built-in architecture by name with seeded weights, its own input shape and classes.
pub fn build(name: &str, seed: u64) -> Result<Graph> {
    build_with(name, seed, &ZooOptions::default())
}

/// Builds a built-in architecture by name with seeded weights and the given input shape and
/// number of classes. Invalid options (wrong rank, zero sizes, an input too small for the
/// model's strides) are errors that name the model and the expected form.
pub fn build_with(name: &str, seed: u64, opts: &ZooOptions) -> Result<Graph> {
    let (form, input, classes) = resolve(name, opts)?;
    let mut b = GraphBuilder::new(name, seed);
    b.meta("architecture", serde_json::json!(name));
    let xs = match form {
        Form::Image => vec![b.input("image", &input)],
        Form::Sequence => vec![b.input("sequence", &input)],
        Form::Tokens => vec![b.ids_input("tokens", &input)],
        Form::History => vec![b.ids_input("history", &input)],
        Form::UserItem => vec![b.ids_input("user", &input), b.ids_input("item", &input)],
        Form::Vector => vec![b.input("features", &input)],
    };
    let vocab = opts.vocab.clone().unwrap_or_default();
    if vocab.contains(&0) {
        return Err(GraphError::Invalid(format!(
            "architecture `{name}`: a vocabulary size must be positive, got {vocab:?}"
        )));
    }
    let mut g = body(&mut b, name, &xs, classes, &vocab)
        .and_then(|y| b.finish(&[&y]))
        .map_err(|e| {
            GraphError::Invalid(format!(
                "architecture `{name}` does not build for input {input:?} and {} = {classes}: {e}",
                classes_word(name)
            ))
        })?;
    if matches!(name, "llama-tiny-tied" | "llama-small") {
        scale_tied_embedding(&mut g)?;
    }
    if name == "yolo-tiny" {
        init_objectness_prior(&mut g)?;
    }
    Ok(g)
}

/// The standard deviation of a tied embedding table at initialisation: Hugging Face's
/// `initializer_range` (GPT-2, Llama). The table is also the output layer, so the N(0, 1) of an
/// untied `nn.Embedding` would give logits of std about sqrt(dim) (a loss near 36 at vocabulary
/// 2,048 and width 128, against ln 2048 = 7.6).
const TIED_EMBEDDING_STD: f64 = 0.02;

/// Rescales `embedding1.weight` (drawn N(0, 1)) to N(0, [`TIED_EMBEDDING_STD`]^2).
fn scale_tied_embedding(g: &mut Graph) -> Result<()> {
    let p = g
        .node_mut("embedding1")?
        .params
        .get_mut("weight")
        .ok_or_else(|| GraphError::Invalid("a tied decoder has no embedding1.weight".into()))?;
    let scaled = (p.value.as_tensor() * TIED_EMBEDDING_STD)?;
    p.value.set(&scaled)?;
    Ok(())
}

/// The layers of architecture `name` on its inputs `xs` (one, except `ncf`'s user and item).
fn body(
    b: &mut GraphBuilder,
    name: &str,
    xs: &[Value],
    classes: usize,
    vocab: &[usize],
) -> Result<Value> {
    let x = &xs[0];
    match name {
        "digits-mlp" => {
            let h = b.flatten(x)?;
            let h = b.linear(&h, 128)?;
            let h = b.relu(&h)?;
            let h = b.linear(&h, 64)?;
            let h = b.relu(&h)?;
            b.named("classifier").linear(&h, classes)
        }
        "digits-cnn" => {
            let h = conv_bn_relu(b, x, 16)?;
            let h = conv_bn_relu(b, &h, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            let h = b.linear(&h, 64)?;
            let h = b.relu(&h)?;
            b.named("classifier").linear(&h, classes)
        }
        "fashion-cnn" => {
            let h = conv_bn_relu(b, x, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = conv_bn_relu(b, &h, 64)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            let h = b.linear(&h, 128)?;
            let h = b.relu(&h)?;
            let h = b.dropout(&h, 0.25)?;
            b.named("classifier").linear(&h, classes)
        }
        "reference-cnn" => {
            let h = conv_bn_relu(b, x, 16)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = conv_bn_relu(b, &h, 32)?;
            let h = b.max_pool2d(&h, 2, 2)?;
            let h = b.flatten(&h)?;
            b.named("classifier").linear(&h, classes)
        }
        "resnet20" => cifar_resnet(b, x, 3, classes),
        "resnet56" => cifar_resnet(b, x, 9, classes),
        "densenet" => densenet(b, x, classes),
        "mobilenet" => mobilenet(b, x, classes),
        "lstm-classifier" => recurrent_classifier(b, x, false, classes),
        "gru-classifier" => recurrent_classifier(b, x, true, classes),
        "bert-tiny" => bert_tiny(b, x, classes, vocab.first().copied().unwrap_or(BERT_VOCAB)),
        "gru-text" => gru_text(
            b,
            x,
            classes,
            vocab.first().copied().unwrap_or(GRU_TEXT_VOCAB),
        ),
        "llama-tiny" => llama(b, x, classes, &LLAMA_TINY, false),
        "llama-tiny-tied" => llama(b, x, classes, &LLAMA_TINY, true),
        "llama-small" => llama(b, x, classes, &LLAMA_SMALL, true),
        "ncf" => ncf(b, x, &xs[1], classes, vocab),
        "gru-recommender" => gru_recommender(b, x, classes, vocab),
        "mlp" => tabular_mlp(b, x, classes),
        "yolo-tiny" => yolo_tiny(b, x, classes),
        "q-mlp" => q_mlp(b, x, classes),
        "actor-mlp" => {
            let h = q_mlp(b, x, classes)?;
            b.named("action").tanh(&h)
        }
        other => Err(GraphError::Invalid(format!(
            "unknown architecture `{other}`; known: {}",
            names().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use prunekit_graph::{param_grads, Executor, InputKind, Mode, Op};

    /// A random batch for input `k`: normal floats, or ids below the vocabulary of the embedding
    /// that reads it (the first embedding when none reads it directly).
    fn sample_input_k(g: &Graph, k: usize, batch: usize) -> Tensor {
        let spec = &g.inputs[k];
        let mut dims = vec![batch];
        dims.extend_from_slice(&spec.shape);
        match spec.kind {
            InputKind::Float => Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap(),
            InputKind::Ids => {
                let embedding = |direct: bool| {
                    g.nodes.iter().find_map(|n| match &n.op {
                        Op::Embedding(e) if !direct || n.inputs[0] == spec.name => {
                            Some(e.num_embeddings)
                        }
                        _ => None,
                    })
                };
                let vocab = embedding(true)
                    .or_else(|| embedding(false))
                    .expect("an ids model embeds its ids");
                Tensor::rand(0f32, vocab as f32, dims, &Device::Cpu)
                    .unwrap()
                    .floor()
                    .unwrap()
                    .clamp(0f32, (vocab - 1) as f32)
                    .unwrap()
                    .to_dtype(DType::U32)
                    .unwrap()
            }
        }
    }

    #[test]
    fn llama_tiny_tied_is_llama_tiny_with_one_table() {
        let tied = build("llama-tiny-tied", 3).unwrap();
        let untied = build("llama-tiny", 3).unwrap();
        let head = tied.node("lm_head").unwrap();
        assert!(!head.params.contains_key("weight"));
        assert_eq!(
            head.shared["weight"],
            prunekit_graph::ParamRef {
                node: "embedding1".into(),
                param: "weight".into()
            }
        );
        assert_eq!(untied.param_count() - tied.param_count(), 1000 * 64);
        // the same function as llama-tiny holding the tied values, the table copied to lm_head
        for (n, k, p) in tied.params() {
            untied.node(&n.name).unwrap().params[k]
                .value
                .set(p.tensor())
                .unwrap();
        }
        let table = tied.node("embedding1").unwrap().params["weight"].tensor();
        untied.node("lm_head").unwrap().params["weight"]
            .value
            .set(&table.copy().unwrap())
            .unwrap();
        let x = sample_input_k(&tied, 0, 2);
        let run = |g: &Graph| {
            Executor::new(0).eval(g, std::slice::from_ref(&x)).unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(run(&tied), run(&untied));
    }

    /// The per-sample output shape each model promises.
    fn expected_output(name: &str) -> Vec<usize> {
        match name {
            "llama-tiny" | "llama-tiny-tied" => vec![32, 1000],
            "llama-small" => vec![128, 2048],
            "bert-tiny" | "mlp" | "gru-text" | "q-mlp" => vec![2],
            "actor-mlp" => vec![1],
            "ncf" => vec![1],
            "gru-recommender" => vec![9066],
            "yolo-tiny" => vec![15, 24, 24],
            _ => vec![10],
        }
    }

    fn forward(g: &Graph, batch: usize, mode: Mode) -> Tensor {
        let xs: Vec<Tensor> = (0..g.inputs.len())
            .map(|k| sample_input_k(g, k, batch))
            .collect();
        Executor::new(0)
            .run(g, &xs, mode, None)
            .unwrap_or_else(|e| panic!("{}: forward failed: {e}", g.name))
            .remove(0)
    }

    fn assert_finite(name: &str, y: &Tensor) {
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite output");
    }

    #[test]
    fn names_are_unique_and_every_one_builds() {
        let n = names();
        assert_eq!(n.len(), 21);
        let mut sorted = n.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), n.len(), "duplicate names in MODELS");
        assert!(n.contains(&"resnet20") && n.contains(&"resnet56"));
    }

    #[test]
    fn every_model_builds_validates_and_runs_at_batch_2() {
        for name in names() {
            let g = build(name, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
            g.validate().unwrap();
            assert_eq!(g.name, name);
            assert!(g.param_count() > 0 && g.macs().unwrap() > 0, "{name}");
            let last = g.nodes.last().unwrap();
            let head = if name.starts_with("llama-") {
                "lm_head"
            } else if name == "actor-mlp" {
                "action"
            } else if name == "yolo-tiny" {
                "head"
            } else {
                "classifier"
            };
            assert_eq!(last.name, head, "{name}: the last layer's name");
            assert_eq!(g.outputs, vec![head.to_string()], "{name}");
            let y = forward(&g, 2, Mode::EVAL);
            let mut want = vec![2];
            want.extend(expected_output(name));
            assert_eq!(y.dims(), want.as_slice(), "{name}: output shape");
            assert_finite(name, &y);
        }
    }

    #[test]
    fn every_trainable_parameter_of_every_model_gets_a_gradient() {
        for name in names() {
            let g = build(name, 1).unwrap();
            let y = forward(&g, 4, Mode::TRAIN);
            assert_finite(name, &y);
            let w = Tensor::randn(0f32, 1.0, y.shape(), y.device()).unwrap();
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
                assert!(
                    mag > 0.0 && mag.is_finite(),
                    "{name}: gradient of {}.{k} is {mag}",
                    n.name
                );
            }
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
    fn the_new_architectures_have_the_stated_layout() {
        let shapes = |name: &str| build(name, 0).unwrap().validate().unwrap();
        // densenet: 24 + 4*12 = 72, transition to 36 at 16x16, 36 + 4*12 = 84
        let s = shapes("densenet");
        let g = build("densenet", 0).unwrap();
        let concats: Vec<&Vec<usize>> = g
            .nodes
            .iter()
            .filter(|n| n.op.type_name() == "concat")
            .map(|n| &s[&n.name])
            .collect();
        assert_eq!(concats.len(), 8);
        assert_eq!(concats[3], &vec![72, 32, 32]);
        assert_eq!(concats[7], &vec![84, 16, 16]);
        // mobilenet: 3 depthwise-separable + 2 inverted residual depthwise convs, groups = channels
        let g = build("mobilenet", 0).unwrap();
        let depthwise: Vec<usize> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Conv2d(c) if c.groups > 1 => {
                    assert_eq!(c.groups, c.in_channels, "{}", n.name);
                    Some(c.groups)
                }
                _ => None,
            })
            .collect();
        assert_eq!(depthwise, vec![16, 32, 64, 256, 256]);
        assert_eq!(
            g.nodes.iter().filter(|n| n.op.type_name() == "add").count(),
            2
        );
        // llama: grouped-query causal attention with RoPE
        let g = build("llama-tiny", 0).unwrap();
        let attention: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Attention(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(attention.len(), 2, "one attention per layer");
        for a in attention {
            assert_eq!((a.num_heads, a.num_kv_heads, a.head_dim), (8, 2, 8));
            assert!(a.causal && a.rope_theta == Some(10000.0));
        }
        // bert: the pooler reads the first token only
        let s = shapes("bert-tiny");
        let g = build("bert-tiny", 0).unwrap();
        let narrow = g
            .nodes
            .iter()
            .find(|n| n.op.type_name() == "narrow")
            .unwrap();
        assert_eq!(s[&narrow.name], vec![1, 64]);
        assert_eq!(s["pooler"], vec![64]);
    }

    #[test]
    fn yolo_tiny_takes_sides_divisible_by_8_and_starts_at_the_objectness_prior() {
        let opts = |side: usize, classes: usize| ZooOptions {
            input: Some(vec![1, side, side]),
            classes: Some(classes),
            ..Default::default()
        };
        let g = build_with("yolo-tiny", 0, &opts(32, 3)).unwrap();
        let y = forward(&g, 2, Mode::EVAL);
        assert_eq!(y.dims(), &[2, 8, 8, 8]);
        let bias = g.node("head").unwrap().params["bias"]
            .value
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert!((bias[0] + 99f32.ln()).abs() < 1e-5, "{bias:?}");
        let err = build_with("yolo-tiny", 0, &opts(100, 3))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("divisible by 8") && err.contains("100x100"),
            "{err}"
        );
    }

    #[test]
    fn options_change_the_input_and_the_classes() {
        let opts = ZooOptions {
            input: Some(vec![1, 28, 28]),
            classes: None,
            ..Default::default()
        };
        let g = build_with("resnet20", 0, &opts).unwrap();
        assert_eq!(g.inputs[0].shape, vec![1, 28, 28]);
        let y = forward(&g, 2, Mode::TRAIN);
        assert_eq!(y.dims(), &[2, 10]);
        assert_finite("resnet20", &y);
        // the shortcut sees 28 -> 14 -> 7 like the main path
        let s = g.validate().unwrap();
        assert_eq!(s["global_avg_pool1"], vec![64]);

        let cases: &[(&str, &[usize], usize, &[usize])] = &[
            ("digits-mlp", &[1, 28, 28], 3, &[3]),
            ("fashion-cnn", &[3, 32, 32], 100, &[100]),
            ("reference-cnn", &[1, 28, 28], 10, &[10]),
            ("densenet", &[1, 28, 28], 5, &[5]),
            ("mobilenet", &[3, 24, 24], 7, &[7]),
            ("lstm-classifier", &[8, 13], 4, &[4]),
            ("gru-classifier", &[5, 40], 2, &[2]),
            ("bert-tiny", &[1], 3, &[3]),
            ("bert-tiny", &[12], 2, &[2]),
            ("gru-text", &[128], 2, &[2]),
            ("llama-tiny", &[7], 50, &[7, 50]),
            ("mlp", &[5], 3, &[3]),
        ];
        for (name, input, classes, out) in cases {
            let opts = ZooOptions {
                input: Some(input.to_vec()),
                classes: Some(*classes),
                ..Default::default()
            };
            let g = build_with(name, 0, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            let y = forward(&g, 2, Mode::EVAL);
            let mut want = vec![2];
            want.extend_from_slice(out);
            assert_eq!(y.dims(), want.as_slice(), "{name} {opts:?}");
            assert_finite(name, &y);
        }
        // defaults are the same model as `build`
        let a = build_with("mobilenet", 3, &ZooOptions::default()).unwrap();
        let b = build("mobilenet", 3).unwrap();
        assert_eq!(a.param_count(), b.param_count());
    }

    #[test]
    fn bad_options_name_the_model_and_the_expected_form() {
        let err = |name: &str, input: Option<Vec<usize>>, classes: Option<usize>| {
            build_with(
                name,
                0,
                &ZooOptions {
                    input,
                    classes,
                    ..Default::default()
                },
            )
            .unwrap_err()
            .to_string()
        };
        let e = err("resnet20", Some(vec![28, 28]), None);
        assert!(
            e.contains("resnet20") && e.contains("[C, H, W]") && e.contains("[28, 28]"),
            "{e}"
        );
        let e = err("lstm-classifier", Some(vec![1, 32, 20]), None);
        assert!(e.contains("lstm-classifier") && e.contains("[T, F]"), "{e}");
        let e = err("mlp", Some(vec![1, 30]), None);
        assert!(
            e.contains("mlp") && e.contains("[F]") && e.contains("[1, 30]"),
            "{e}"
        );
        let e = err("bert-tiny", Some(vec![32, 64]), None);
        assert!(e.contains("bert-tiny") && e.contains("[T]"), "{e}");
        let e = err("mobilenet", Some(vec![3, 0, 32]), None);
        assert!(e.contains("mobilenet") && e.contains("positive"), "{e}");
        let e = err("digits-cnn", None, Some(0));
        assert!(e.contains("digits-cnn") && e.contains("classes"), "{e}");
        let e = err("llama-tiny", None, Some(0));
        assert!(e.contains("llama-tiny") && e.contains("vocabulary"), "{e}");
        // right rank, but too small for the model's pooling: the shape error names the model
        let e = err("fashion-cnn", Some(vec![1, 2, 2]), None);
        assert!(
            e.contains("fashion-cnn") && e.contains("[1, 2, 2]") && e.contains("max_pool2d"),
            "{e}"
        );
    }

    #[test]
    fn gru_text_takes_the_vocabulary_and_length_and_runs_on_padded_ids() {
        let opts = ZooOptions {
            input: Some(vec![128]),
            classes: None,
            vocab: Some(vec![6000]),
        };
        let g = build_with("gru-text", 0, &opts).unwrap();
        assert_eq!(g.inputs[0].name, "tokens");
        assert_eq!(g.inputs[0].kind, InputKind::Ids);
        assert_eq!(g.inputs[0].shape, vec![128]);
        let s = g.validate().unwrap();
        let emb = g
            .nodes
            .iter()
            .find(|n| n.op.type_name() == "embedding")
            .unwrap();
        assert!(
            matches!(&emb.op, Op::Embedding(e) if e.num_embeddings == 6000 && e.embedding_dim == 64)
        );
        assert_eq!(s[&emb.name], vec![128, 64]);
        let gru = g.nodes.iter().find(|n| n.op.type_name() == "gru").unwrap();
        assert_eq!(s[&gru.name], vec![64]);
        assert_eq!(s["classifier"], vec![2]);
        // [CLS]-like id 2, a few tokens, then [PAD] = 0, and a row of the largest id
        let mut ids = vec![0u32; 2 * 128];
        ids[..4].copy_from_slice(&[2, 17, 4000, 5]);
        ids[128..].fill(5999);
        let x = Tensor::from_vec(ids, (2, 128), &Device::Cpu).unwrap();
        let y = Executor::new(0)
            .run(&g, &[x], Mode::EVAL, None)
            .unwrap()
            .remove(0);
        assert_eq!(y.dims(), &[2, 2]);
        assert_finite("gru-text", &y);
        let e = build_with(
            "gru-text",
            0,
            &ZooOptions {
                vocab: Some(vec![0]),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gru-text") && e.contains("vocabulary"), "{e}");
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        for e in [
            build("resnet-9000", 0).unwrap_err().to_string(),
            build_with("resnet-9000", 0, &ZooOptions::default())
                .unwrap_err()
                .to_string(),
        ] {
            assert!(e.contains("resnet-9000"), "{e}");
            for n in names() {
                assert!(e.contains(n), "{e} does not list {n}");
            }
        }
    }

    /// ncf by hand: user and item embeddings of 32, the MLP tower 64 -> 64 -> 32 -> 16 and the
    /// classifier over [GMF 32, MLP 16] with one output.
    const NCF_PARAMS: usize =
        (671 + 9066) * 32 + (64 * 64 + 64) + (64 * 32 + 32) + (32 * 16 + 16) + (48 + 1);
    /// gru-recommender by hand: embedding 9067 x 64, GRU 64 -> 64 (PyTorch layout: 3 gates of
    /// input and hidden weights and two biases), classifier 64 -> 9066.
    const GRU_REC_PARAMS: usize = 9067 * 64 + (2 * 3 * 64 * 64 + 6 * 64) + (64 * 9066 + 9066);

    #[test]
    fn recommenders_take_user_item_or_history_ids() {
        let opts = |vocab: Vec<usize>, classes| ZooOptions {
            classes: Some(classes),
            vocab: Some(vocab),
            ..Default::default()
        };
        for classes in [1, 2] {
            let g = build_with("ncf", 4, &opts(vec![7, 11], classes)).unwrap();
            let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(names, ["user", "item"]);
            assert!(g.inputs.iter().all(|i| i.shape.is_empty()));
            for mode in [Mode::EVAL, Mode::TRAIN] {
                let y = forward(&g, 5, mode);
                assert_eq!(y.dims(), &[5, classes]);
                assert_finite("ncf", &y);
            }
            let s = g.validate().unwrap();
            assert_eq!(s["user_embedding"], vec![32]);
            assert_eq!(s["gmf"], vec![32]);
            // GMF and the MLP tower read the same two embeddings
            let gmf = g.nodes.iter().find(|n| n.name == "gmf").unwrap();
            assert_eq!(gmf.inputs, ["user_embedding", "item_embedding"]);
            let first_concat = g
                .nodes
                .iter()
                .find(|n| n.op.type_name() == "concat")
                .unwrap();
            assert_eq!(first_concat.inputs, gmf.inputs);
            let classifier = g.nodes.iter().find(|n| n.name == "classifier").unwrap();
            assert_eq!(s[&classifier.inputs[0]], vec![48]);
        }
        // the user and item ids select their own rows: ids past the user table are refused
        let g = build_with("ncf", 0, &opts(vec![3, 50], 1)).unwrap();
        let ids = |v: Vec<u32>| Tensor::new(v, &Device::Cpu).unwrap();
        let ok = Executor::new(0).run(&g, &[ids(vec![2, 0]), ids(vec![49, 7])], Mode::EVAL, None);
        assert_eq!(ok.unwrap()[0].dims(), &[2, 1]);
        let bad = Executor::new(0).run(&g, &[ids(vec![3, 0]), ids(vec![1, 1])], Mode::EVAL, None);
        assert!(bad.is_err());
        let e = build_with("ncf", 0, &opts(vec![7], 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ncf") && e.contains("[users, items]"), "{e}");

        let g = build_with(
            "gru-recommender",
            0,
            &ZooOptions {
                input: Some(vec![6]),
                ..opts(vec![13], 12)
            },
        )
        .unwrap();
        assert_eq!(g.inputs[0].name, "history");
        assert_eq!(g.inputs[0].shape, vec![6]);
        let y = forward(&g, 3, Mode::TRAIN);
        assert_eq!(y.dims(), &[3, 12]);
        assert_finite("gru-recommender", &y);
        // without a vocabulary the embedding holds the items and a PAD id
        let g = build_with(
            "gru-recommender",
            0,
            &ZooOptions {
                classes: Some(30),
                ..Default::default()
            },
        )
        .unwrap();
        let e = g.nodes.iter().find_map(|n| match &n.op {
            Op::Embedding(e) => Some(e.num_embeddings),
            _ => None,
        });
        assert_eq!(e, Some(31));
    }

    /// The embedding width of `ncf` is one channel group over both embeddings (the GMF product
    /// couples them) that also slices the MLP's first layer (twice: the u and v halves) and the
    /// classifier's GMF columns; removing half of it keeps a model that runs.
    #[test]
    fn ncf_embedding_width_is_one_prunable_group() {
        let opts = ZooOptions {
            vocab: Some(vec![7, 11]),
            classes: Some(1),
            ..Default::default()
        };
        let mut g = build_with("ncf", 0, &opts).unwrap();
        let a = prunekit_graph::analyse(&g).unwrap();
        let group = a
            .groups
            .iter()
            .find(|gr| gr.nodes.iter().any(|n| n == "user_embedding"))
            .expect("a group over the user embedding");
        assert!(
            group.nodes.iter().any(|n| n == "item_embedding"),
            "{group:?}"
        );
        assert_eq!(group.units.len(), 32, "{group:?}");
        let before = g.param_count();
        let half: Vec<usize> = group.units[..16].to_vec();
        a.remove(&mut g, &half).unwrap();
        // 16 columns of both tables, 2 x 16 input rows of the first MLP layer (64 outputs),
        // 16 classifier columns
        assert_eq!(before - g.param_count(), (7 + 11) * 16 + 2 * 16 * 64 + 16);
        let y = forward(&g, 3, Mode::EVAL);
        assert_eq!(y.dims(), &[3, 1]);
        assert_finite("ncf", &y);
    }

    #[test]
    fn mlp_on_30_tabular_features() {
        let opts = ZooOptions {
            input: Some(vec![30]),
            ..Default::default()
        };
        let g = build_with("mlp", 0, &opts).unwrap();
        assert_eq!(g.inputs[0].name, "features");
        assert_eq!(
            (g.inputs[0].shape.clone(), g.inputs[0].kind),
            (vec![30], InputKind::Float)
        );
        let s = g.validate().unwrap();
        let linears: Vec<&Vec<usize>> = g
            .nodes
            .iter()
            .filter(|n| n.op.type_name() == "linear")
            .map(|n| &s[&n.name])
            .collect();
        assert_eq!(linears, [&vec![64], &vec![32], &vec![2]]);
        // 30*64 + 64 + 64*32 + 32 + 32*2 + 2
        assert_eq!(g.param_count(), 1984 + 2080 + 66);
        assert_eq!(g.macs().unwrap(), 30 * 64 + 64 * 32 + 32 * 2);
        for mode in [Mode::EVAL, Mode::TRAIN] {
            let y = forward(&g, 5, mode);
            assert_eq!(y.dims(), &[5, 2]);
            assert_finite("mlp", &y);
        }
    }

    /// Every model's input, parameters and MACs are the recorded ones, so a change to a model's
    /// size is deliberate (`cargo test -p prunekit-zoo sizes -- --nocapture` prints them).
    /// digits-mlp by hand: 64*128 + 128 + 128*64 + 64 + 64*10 + 10 params, 64*128 + 128*64 +
    /// 64*10 MACs; llama-tiny: embedding 1000*64, per layer 2 RMSNorms (64 each), attention
    /// (q 64x64, k and v 16x64, o 64x64, with biases) and the SwiGLU (64->176 twice, 176->64, with
    /// biases), a final RMSNorm and the 64->1000 head; mlp: 16*64 + 64 + 64*32 + 32 + 32*2 + 2
    /// params, 16*64 + 64*32 + 32*2 MACs.
    #[test]
    fn sizes() {
        let recorded: &[(&str, &[usize], usize, u64)] = &[
            ("digits-mlp", &[1, 8, 8], 17_226, 17_024),
            ("digits-cnn", &[1, 8, 8], 38_378, 337_536),
            ("fashion-cnn", &[1, 28, 28], 421_834, 4_241_152),
            ("reference-cnn", &[3, 32, 32], 25_674, 1_642_496),
            ("resnet20", &[3, 32, 32], 272_474, 40_813_184),
            ("resnet56", &[3, 32, 32], 855_770, 125_747_840),
            ("densenet", &[3, 32, 32], 46_642, 27_870_024),
            ("mobilenet", &[3, 32, 32], 81_770, 20_865_664),
            ("lstm-classifier", &[32, 20], 32_746, 1_008_096),
            ("gru-classifier", &[32, 20], 24_682, 756_192),
            ("bert-tiny", &[32], 137_410, 2_363_520),
            ("gru-text", &[32], 89_090, 786_560),
            ("llama-tiny", &[32], 218_536, 5_128_192),
            // the 1000 x 64 table once
            ("llama-tiny-tied", &[32], 154_536, 5_128_192),
            // vocabulary 2048 x 128 once (tied); attention at T = 128 counts its score MACs
            ("llama-small", &[128], 1_056_896, 150_994_944),
            // embeddings and the GMF product count no MACs
            ("ncf", &[], NCF_PARAMS, 64 * 64 + 64 * 32 + 32 * 16 + 48),
            (
                "gru-recommender",
                &[20],
                GRU_REC_PARAMS,
                20 * (2 * 3 * 64 * 64) + 64 * 9066,
            ),
            // 4*128 + 128 + 128*128 + 128 + 128*2 + 2
            ("q-mlp", &[4], 17_410, 17_152),
            // 3*128 + 128 + 128*128 + 128 + 128 + 1 (the tanh has no parameters or MACs)
            ("actor-mlp", &[3], 17_153, 16_896),
            // convolutions (no bias, BN 2 per channel) 176 + 4,672 + 9,280 + 18,560 + 36,992 +
            // 2,112 (lateral 1x1) + 18,496 (neck) + 495 (head 32 x 15 + 15); MACs of the convs
            // 331,776 + 2,654,208 + 5,308,416 + 2,654,208 + 5,308,416 + 294,912 + 10,616,832 +
            // 276,480
            ("yolo-tiny", &[1, 96, 96], 90_783, 27_445_248),
            ("mlp", &[16], 3_234, 3_136),
        ];
        assert_eq!(
            recorded.iter().map(|r| r.0).collect::<Vec<_>>(),
            names(),
            "one recorded size per model"
        );
        let size_of = |name: &str| recorded.iter().find(|r| r.0 == name).map_or(0, |r| r.2);
        assert_eq!(
            64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10,
            size_of("digits-mlp")
        );
        let llama_layer = 2 * 64
            + (2 * 64 * 64 + 2 * 64 + 2 * (16 * 64 + 16))
            + 2 * (64 * 176 + 176)
            + 176 * 64
            + 64;
        assert_eq!(
            1000 * 64 + 2 * llama_layer + 64 + 64 * 1000 + 1000,
            size_of("llama-tiny")
        );
        assert_eq!(16 * 64 + 64 + 64 * 32 + 32 + 32 * 2 + 2, size_of("mlp"));
        // gru-text: embedding 1000*64, GRU 64->64 (PyTorch's layout: 3 gates of input and
        // recurrent weights, two biases), linear 64->2; MACs 32 steps of both matrices + the head
        let gru = 2 * 192 * 64 + 2 * 192;
        assert_eq!(1000 * 64 + gru + 64 * 2 + 2, size_of("gru-text"));
        let gru_text_macs = recorded
            .iter()
            .find(|r| r.0 == "gru-text")
            .map_or(0, |r| r.3);
        assert_eq!(32 * 2 * 192 * 64 + 64 * 2, gru_text_macs);
        for &(name, input, params, macs) in recorded {
            let g = build(name, 0).unwrap();
            println!(
                "{name:16} input {:?} params {:>9} MACs {:>11}",
                g.inputs[0].shape,
                g.param_count(),
                g.macs().unwrap()
            );
            assert_eq!(g.inputs[0].shape, input, "{name}: input");
            assert_eq!(g.param_count(), params, "{name}: params");
            assert_eq!(g.macs().unwrap(), macs, "{name}: MACs");
        }
    }
}
