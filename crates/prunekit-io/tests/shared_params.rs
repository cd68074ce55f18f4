//! Files of a graph with a shared parameter (an output layer tied to the embedding table): our
//! format stores the tensor once and restores the sharing; ONNX writes one initializer read by
//! both nodes; PyTorch state dicts hold both keys (one storage in `.pt`).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use prunekit_graph::{Executor, Graph, GraphBuilder};
use prunekit_io::native::{self, STRUCTURE_FILE, WEIGHTS_FILE};
use prunekit_io::pytorch;

const VOCAB: usize = 9;
const HIDDEN: usize = 6;
const T: usize = 3;

fn tied_lm(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("tied-lm", seed);
    let ids = b.ids_input("ids", &[T]);
    let x = b.named("embed").embedding(&ids, VOCAB, HIDDEN).unwrap();
    let n = b.rms_norm(&x).unwrap();
    let h = b.linear(&n, HIDDEN).unwrap();
    let x = b.add(&x, &h).unwrap();
    let n = b.rms_norm(&x).unwrap();
    let y = b
        .named("lm_head")
        .shared_param("weight", "embed", "weight")
        .linear(&n, VOCAB)
        .unwrap();
    b.finish(&[&y]).unwrap()
}

fn ids(batch: usize) -> Tensor {
    let v: Vec<u32> = (0..batch * T).map(|i| (i * 5 % VOCAB) as u32).collect();
    Tensor::from_vec(v, (batch, T), &Device::Cpu).unwrap()
}

fn run(g: &Graph) -> Vec<f32> {
    Executor::new(0).eval(g, &[ids(2)]).unwrap()[0]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn masked_tied_lm() -> Graph {
    let mut g = tied_lm(1);
    let m: Vec<f32> = (0..VOCAB * HIDDEN)
        .map(|i| if i % 4 == 0 { 0.0 } else { 1.0 })
        .collect();
    let m = Tensor::from_vec(m, (VOCAB, HIDDEN), &Device::Cpu).unwrap();
    g.set_mask("embed", "weight", m).unwrap();
    g
}

#[test]
fn our_format_stores_the_shared_tensor_once_and_restores_the_sharing() {
    let g = masked_tied_lm();
    let dir = tempfile::tempdir().unwrap();
    native::save(&g, dir.path()).unwrap();
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    // the masked table, compressed (a bitmask and the kept values), under the owner's name only
    assert!(
        names.contains(&"embed.weight.bitmask") && names.contains(&"embed.weight.values"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("lm_head.weight")),
        "{names:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(STRUCTURE_FILE)).unwrap())
            .unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    let head = nodes.iter().find(|n| n["name"] == "lm_head").unwrap();
    assert_eq!(
        head["shared"],
        serde_json::json!({"weight": {"node": "embed", "param": "weight"}})
    );
    assert!(
        nodes
            .iter()
            .filter(|n| n["name"] != "lm_head")
            .all(|n| n.get("shared").is_none()),
        "an empty `shared` is not written"
    );

    let back = native::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(
        back.node("lm_head").unwrap().shared,
        g.node("lm_head").unwrap().shared
    );
    assert_eq!(back.param_count(), g.param_count());
    assert_eq!(run(&back), run(&g));
    // one variable: the borrower resolves to the owner's, mask included
    let head = back.node("lm_head").unwrap();
    let owner = &back.node("embed").unwrap().params["weight"];
    let borrowed = back.param_of(head, "weight").unwrap();
    assert_eq!(borrowed.tensor().id(), owner.tensor().id());
    assert!(borrowed.mask.is_some());
    let before = run(&back);
    owner.value.set(&(owner.tensor() * 3.0).unwrap()).unwrap();
    assert_ne!(run(&back), before, "lm_head reads the owner's variable");
}

#[test]
fn a_bad_shared_entry_in_model_json_is_an_error_naming_both_nodes() {
    let g = tied_lm(2);
    let dir = tempfile::tempdir().unwrap();
    native::save(&g, dir.path()).unwrap();
    let path = dir.path().join(STRUCTURE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    for (bad, want) in [
        (r#""node": "embed""#, r#""node": "nowhere""#),
        (r#""param": "weight""#, r#""param": "bias""#),
    ] {
        let sub = dir.path().join(format!("case-{}", want.len()));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(dir.path().join(WEIGHTS_FILE), sub.join(WEIGHTS_FILE)).unwrap();
        assert!(text.contains(bad), "{text}");
        std::fs::write(sub.join(STRUCTURE_FILE), text.replacen(bad, want, 1)).unwrap();
        let e = native::load(&sub, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("model.json") && e.contains("lm_head"), "{e}");
        assert!(e.contains("nowhere") || e.contains("bias"), "{e}");
    }
    // a tensor stored for the borrowed parameter belongs to no parameter
    let sub = dir.path().join("extra");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join(STRUCTURE_FILE), &text).unwrap();
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for name in st.names() {
        let v = st.tensor(name).unwrap();
        let t: Tensor = candle_core::safetensors::Load::load(&v, &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t);
    }
    let table = tensors["embed.weight"].clone();
    tensors.insert("lm_head.weight".into(), table);
    let out = safetensors::tensor::serialize(tensors.iter().collect::<Vec<_>>(), None).unwrap();
    std::fs::write(sub.join(WEIGHTS_FILE), out).unwrap();
    let e = native::load(&sub, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("no parameter"),
        "{e}"
    );
}

#[test]
fn onnx_writes_one_initializer_read_by_both_nodes() {
    let g = tied_lm(3);
    let m = prunekit_io::onnx::to_model(&g).unwrap();
    let graph = m.graph.as_ref().unwrap();
    let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        inits.iter().filter(|n| **n == "embed.weight").count(),
        1,
        "{inits:?}"
    );
    let table_sized = graph
        .initializer
        .iter()
        .filter(|t| t.dims.iter().product::<i64>() == (VOCAB * HIDDEN) as i64)
        .count();
    assert_eq!(table_sized, 1, "the table is written once: {inits:?}");
    let readers: Vec<&str> = graph
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == "embed.weight"))
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(readers.len(), 2, "{readers:?}");
    assert!(readers.contains(&"Gather"), "{readers:?}");
    // the importer recovers the tie: one initializer feeding two weight slots of one layout
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tied.onnx");
    prunekit_io::onnx::save(&g, &path).unwrap();
    let back = prunekit_io::onnx::load(&path, &Device::Cpu).unwrap();
    // (RMSNorm comes back decomposed, its scale a constant: compare the weight matrices)
    let weights = |g: &Graph| g.weight_counts().unwrap().weights;
    assert_eq!(weights(&back), weights(&g));
    assert_eq!(
        back.node("lm_head").unwrap().shared["weight"],
        prunekit_graph::ParamRef {
            node: "embed".into(),
            param: "weight".into()
        }
    );
    let (a, b) = (run(&g), run(&back));
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn onnx_import_ties_only_one_initializer_in_one_layout() {
    // the untied graph: two initializers of equal values stay two tensors
    let g = tied_lm(5);
    let mut untied = g.try_clone().unwrap();
    let table = untied.node("embed").unwrap().params["weight"]
        .tensor()
        .copy()
        .unwrap();
    let head = untied.node_mut("lm_head").unwrap();
    head.shared.clear();
    head.params.insert(
        "weight".into(),
        prunekit_graph::Param {
            value: candle_core::Var::from_tensor(&table).unwrap(),
            mask: None,
            role: prunekit_graph::Role::Weight,
        },
    );
    untied.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("untied.onnx");
    prunekit_io::onnx::save(&untied, &path).unwrap();
    let back = prunekit_io::onnx::load(&path, &Device::Cpu).unwrap();
    assert!(back.nodes.iter().all(|n| n.shared.is_empty()));
    let weights = |g: &Graph| g.weight_counts().unwrap().weights;
    assert_eq!(weights(&back), weights(&untied));
    assert_eq!(weights(&back), weights(&g) + VOCAB * HIDDEN);
}

#[test]
fn pytorch_state_dicts_hold_both_keys() {
    let g = tied_lm(4);
    let sd = pytorch::state_dict(&g).unwrap();
    let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"embed.weight") && keys.contains(&"lm_head.weight"));
    assert_eq!(
        pytorch::aliases(&g),
        BTreeMap::from([("lm_head.weight".to_string(), "embed.weight".to_string())])
    );
    let dir = tempfile::tempdir().unwrap();
    // .pt: one storage for both keys
    let pt = dir.path().join("tied.pt");
    pytorch::save_pt(&g, &pt).unwrap();
    let zip = zip::ZipArchive::new(std::fs::File::open(&pt).unwrap()).unwrap();
    let storages = zip
        .file_names()
        .filter(|n| n.as_ref().is_ok_and(|n| n.contains("/data/")))
        .count();
    assert_eq!(storages, sd.len() - 1, "the shared tensor is stored once");
    let read: BTreeMap<String, Tensor> =
        pytorch::read_state_dict(&pt).unwrap().into_iter().collect();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&read["lm_head.weight"]), flat(&read["embed.weight"]));
    let back = pytorch::load_state_dict(&pt, tied_lm(99)).unwrap();
    assert_eq!(run(&back), run(&g));
    // safetensors cannot alias: both keys, the same data
    let sf = dir.path().join("tied.safetensors");
    pytorch::save_safetensors(&g, &sf).unwrap();
    let read: BTreeMap<String, Tensor> =
        pytorch::read_state_dict(&sf).unwrap().into_iter().collect();
    assert_eq!(flat(&read["lm_head.weight"]), flat(&read["embed.weight"]));
    let back = pytorch::load_state_dict(&sf, tied_lm(98)).unwrap();
    assert_eq!(run(&back), run(&g));

    // the borrower's key absent (Hugging Face's tied checkpoints): fine
    let mut only_owner: BTreeMap<String, Tensor> = read.clone();
    only_owner.remove("lm_head.weight");
    let p = dir.path().join("owner-only.safetensors");
    std::fs::write(
        &p,
        safetensors::tensor::serialize(only_owner.iter().collect::<Vec<_>>(), None).unwrap(),
    )
    .unwrap();
    let back = pytorch::load_state_dict(&p, tied_lm(97)).unwrap();
    assert_eq!(run(&back), run(&g));
    // different values under the borrower's key: an error naming both
    let mut untied = read;
    let w = (&untied["lm_head.weight"] + 1.0).unwrap();
    untied.insert("lm_head.weight".into(), w);
    let p = dir.path().join("untied.safetensors");
    std::fs::write(
        &p,
        safetensors::tensor::serialize(untied.iter().collect::<Vec<_>>(), None).unwrap(),
    )
    .unwrap();
    let e = pytorch::load_state_dict(&p, tied_lm(96))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("embed") && e.contains("ties"),
        "{e}"
    );
}
