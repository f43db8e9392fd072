//! The importer against onnxruntime: every fixture model (`fixtures/make_fixtures.py`, one per
//! op family) and every network of `../shared/vnncomp2021` must compute what onnxruntime
//! computed on random inputs; the chain form must equal the graph; unsupported ops and bad
//! files give errors that name the problem.

use candle_core::{Device, Tensor as CTensor};
use onnx_import::{ImportError, Model};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn vec_of(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// onnxruntime computes in f32: agree to 1e-4 absolute plus 1e-4 relative.
fn assert_close(ours: &[f64], theirs: &[f64], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: output lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{what}: output {i} is {a}, onnxruntime says {b}");
    }
}

/// Loads a fixture, checks shapes and the forward pass against onnxruntime; returns the model.
fn check_fixture(name: &str) -> Model {
    let model = Model::load(fixture(&format!("{name}.onnx"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    let in_shape: Vec<usize> = vec_of(&json["input_shape"]).iter().map(|&d| d as usize).collect();
    let out_shape: Vec<usize> = vec_of(&json["output_shape"]).iter().map(|&d| d as usize).collect();
    assert_eq!(model.input_shape, in_shape, "{name}: input shape");
    assert_eq!(model.output_shape, out_shape, "{name}: output shape");
    let (xs, ys) = (json["inputs"].as_array().unwrap(), json["outputs"].as_array().unwrap());
    assert!(!xs.is_empty());
    for (x, y) in xs.iter().zip(ys) {
        let ours = model.forward(&vec_of(x)).unwrap();
        assert_close(&ours, &vec_of(y), name);
    }
    model
}

/// The chain form (matrices read off the graph) and its `nets::Network` equal the graph.
fn check_chain(name: &str, model: &Model) {
    let chain = model.chain().unwrap_or_else(|e| panic!("{name}: {e}"));
    let net = chain.to_network(name, &Device::Cpu).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    for x in json["inputs"].as_array().unwrap() {
        let x = vec_of(x);
        let graph = model.forward(&x).unwrap();
        let via_chain = chain.forward(&x);
        for (a, b) in graph.iter().zip(&via_chain) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{name}: chain gives {b}, graph {a}");
        }
        let t = CTensor::from_vec(x.clone(), (1, x.len()), &Device::Cpu).unwrap();
        let y = net.forward(&t).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (a, b) in graph.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{name}: network gives {b}, graph {a}");
        }
    }
}

#[test]
fn acas_xu_form_sub_flatten_matmul_add_relu() {
    let m = check_fixture("acas_like");
    assert_eq!(m.op_types(), ["Sub", "Flatten", "MatMul", "Add", "Relu", "MatMul", "Add"]);
    check_chain("acas_like", &m);
    assert_eq!(m.chain().unwrap().segments.len(), 2);
}

#[test]
fn gemm_with_alpha_beta_and_transposes() {
    let m = check_fixture("gemm");
    check_chain("gemm", &m);
}

#[test]
fn normalisation_by_constants_constant_node_and_reshape() {
    let m = check_fixture("normalise");
    // The Constant node is folded: it is no longer a node of the graph.
    assert!(!m.op_types().contains(&"Constant"));
    assert_eq!(m.op_types(), ["Sub", "Div", "Mul", "Reshape", "Gemm"]);
    check_chain("normalise", &m);
}

#[test]
fn constants_are_folded() {
    let m = check_fixture("folding");
    // Mul and Reshape of initializers become one constant; MatMul and Relu remain.
    assert_eq!(m.op_types(), ["MatMul", "Relu"]);
}

#[test]
fn one_dimensional_matmul_weight_first() {
    let m = check_fixture("matmul_vector");
    assert_eq!(m.input_shape, [1]);
    check_chain("matmul_vector", &m);
}

#[test]
fn conv_with_padding_stride_groups_dilation_and_batchnorm() {
    let m = check_fixture("conv_bn");
    assert_eq!(m.op_types(), ["Conv", "BatchNormalization", "Relu", "Conv", "Flatten", "Gemm"]);
    check_chain("conv_bn", &m);
}

#[test]
fn average_and_max_pooling_and_same_padding() {
    let m = check_fixture("pools");
    let err = m.chain().unwrap_err().to_string();
    assert!(err.contains("MaxPool") && err.contains("not affine"), "{err}");
}

#[test]
fn pad_as_inputs_and_as_attributes() {
    let m = check_fixture("pad");
    check_chain("pad", &m);
    let m = check_fixture("pad_v2");
    check_chain("pad_v2", &m);
}

#[test]
fn sigmoid_and_tanh_run_but_do_not_lower() {
    let m = check_fixture("smooth");
    let err = m.chain().unwrap_err().to_string();
    assert!(err.contains("Sigmoid"), "{err}");
}

#[test]
fn residual_add_of_two_branches() {
    let m = check_fixture("residual");
    // The Add joins a branch from before the second ReLU: the forward pass is right, the chain
    // form says which node breaks it.
    let err = m.chain().unwrap_err().to_string();
    assert!(err.contains("skip connection") && err.contains("Add"), "{err}");
    // Two affine branches after the same ReLU are still a chain.
    let m = check_fixture("affine_branches");
    check_chain("affine_branches", &m);
}

#[test]
fn unsupported_op_is_named_with_its_node() {
    match Model::load(fixture("unsupported.onnx")) {
        Err(e @ ImportError::Unsupported { .. }) => {
            let s = e.to_string();
            assert!(s.contains("`Softmax`") && s.contains("`the_softmax`"), "{s}");
        }
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("a model with Softmax must not import"),
    }
}

#[test]
fn bad_files_give_errors() {
    assert!(matches!(Model::load(fixture("missing.onnx")), Err(ImportError::Io { .. })));
    let bytes = std::fs::read(fixture("acas_like.onnx")).unwrap();
    for cut in [3, bytes.len() / 2, bytes.len() - 1] {
        assert!(Model::from_bytes(&bytes[..cut]).is_err(), "a file cut at {cut} bytes must not import");
    }
    let e = Model::from_bytes(b"this is not protobuf at all \xff\xff\xff").unwrap_err();
    assert!(matches!(e, ImportError::Decode(_) | ImportError::Graph(_)), "{e}");
    // An empty message decodes but has no graph.
    let e = Model::from_bytes(&[]).unwrap_err().to_string();
    assert!(e.contains("no graph"), "{e}");
}

#[test]
fn wrong_input_length_is_an_error() {
    let m = Model::load(fixture("acas_like.onnx")).unwrap();
    let e = m.forward(&[0.0; 4]).unwrap_err().to_string();
    assert!(e.contains("4 values") && e.contains("expects 5"), "{e}");
}

#[test]
fn every_vnncomp2021_network_imports_and_matches_onnxruntime() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vnncomp2021");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("vnncomp2021_outputs.json")).unwrap()).unwrap();
    let nets = json.as_object().unwrap();
    assert_eq!(nets.len(), 45 + 3 + 5, "ACAS Xu, mnistfc and test networks");
    for (rel, v) in nets {
        let model = Model::load(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let chain = model.chain().unwrap_or_else(|e| panic!("{rel}: {e}"));
        for (x, y) in v["inputs"].as_array().unwrap().iter().zip(v["outputs"].as_array().unwrap()) {
            let x = vec_of(x);
            let ours = model.forward(&x).unwrap();
            assert_close(&ours, &vec_of(y), rel);
            assert_close(&chain.forward(&x), &ours, rel);
        }
    }
}

/// `Model::lower` (ReLU, Sigmoid, Tanh and MaxPool as layers) computes what the graph computes.
fn check_lowered(name: &str, model: &Model) -> nets::Network {
    let net = model.lower(name, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    for x in json["inputs"].as_array().unwrap() {
        let x = vec_of(x);
        let graph = model.forward(&x).unwrap();
        let t = CTensor::from_vec(x.clone(), (1, x.len()), &Device::Cpu).unwrap();
        let y = net.forward(&t).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(y.len(), graph.len(), "{name}: output length");
        for (a, b) in graph.iter().zip(&y) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{name}: lowered network gives {b}, graph {a}");
        }
    }
    net
}

#[test]
fn maxpool_sigmoid_tanh_lower_to_their_layers() {
    let m = check_fixture("pool_net");
    // The ReLU chain form still refuses them; the general lowering takes them.
    assert!(m.chain().unwrap_err().to_string().contains("MaxPool"));
    let net = check_lowered("pool_net", &m);
    let kinds: Vec<String> = net.spec().layers.iter().map(|l| format!("{l:?}")).collect();
    let first = |k: &str| kinds.iter().position(|s| s.starts_with(k)).unwrap_or_else(|| panic!("no {k} in {kinds:?}"));
    assert!(first("ReLU") < first("Reshape") && first("Reshape") < first("MaxPool2d"));
    assert!(first("MaxPool2d") < first("Sigmoid") && first("Sigmoid") < first("Tanh"), "{kinds:?}");
    let pools = check_fixture("pools");
    check_lowered("pools", &pools);
    let smooth = check_fixture("smooth");
    check_lowered("smooth", &smooth);
    // A pure ReLU chain lowers to the same layers as the chain form.
    let acas = check_fixture("acas_like");
    let a = check_lowered("acas_like", &acas).spec();
    assert_eq!(a, acas.to_network("acas_like", &Device::Cpu).unwrap().spec());
}

#[test]
fn lowered_pooling_net_gets_sound_bounds_from_every_family_method() {
    use dual_core::bounds::{BoundOptions, Method, Spec};
    let m = check_fixture("pool_net");
    let net = m.lower("pool_net", &Device::Cpu).unwrap();
    let n_in = m.input_len();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(fixture("pool_net.json")).unwrap()).unwrap();
    let x0 = vec_of(&json["inputs"][0]);
    let x = CTensor::from_vec(x0.clone(), (1, n_in), &Device::Cpu).unwrap();
    let eps = 0.05;
    // Rows: every output, both signs.
    let outs = m.output_len();
    let mut c = vec![0.0; 2 * outs * outs];
    for j in 0..outs {
        c[j * outs + j] = 1.0;
        c[(outs + j) * outs + j] = -1.0;
    }
    let spec = Spec::new(CTensor::from_vec(c, (1, 2 * outs, outs), &Device::Cpu).unwrap()).unwrap();
    // Sampled points of the box (corners and uniform, a fixed sequence).
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let samples: Vec<Vec<f64>> = (0..300)
        .map(|s| {
            x0.iter()
                .map(|&v| {
                    if s % 2 == 0 {
                        v + eps * if next() < 0.5 { -1.0 } else { 1.0 }
                    } else {
                        v + eps * (2.0 * next() - 1.0)
                    }
                })
                .collect()
        })
        .collect();
    let ys: Vec<Vec<f64>> = samples.iter().map(|p| m.forward(p).unwrap()).collect();
    let mut widths = Vec::new();
    for method in [Method::Ibp, Method::CrownIbp, Method::Crown, Method::AlphaCrown] {
        let ball = Box::new(dual_layers::InfBall::new(&x, eps).unwrap());
        let sb = net.spec_bounds(&x, ball, &spec, method, &BoundOptions::default()).unwrap();
        let lb = sb.lower.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for y in &ys {
            for j in 0..outs {
                assert!(lb[j] <= y[j] + 1e-9, "{}: lower bound {} of output {j} above {}", method.name(), lb[j], y[j]);
                assert!(-lb[outs + j] >= y[j] - 1e-9, "{}: upper bound of output {j} below {}", method.name(), y[j]);
            }
        }
        widths.push((0..outs).map(|j| -lb[outs + j] - lb[j]).sum::<f64>());
    }
    // CROWN is tighter than IBP on this net.
    assert!(widths[2] < widths[0], "widths ibp/crown-ibp/crown/alpha: {widths:?}");
}

#[test]
fn dilated_maxpool_is_refused_by_name() {
    let m = check_fixture("maxpool_dilated");
    let err = m.lower("d", &Device::Cpu).err().expect("refused").to_string();
    assert!(err.contains("MaxPool") && err.contains("dilations"), "{err}");
}
