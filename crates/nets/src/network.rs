//! Sequential and DenseSequential networks.

use crate::{
    build::{build_layer_with, CustomBuilder, ParamInit},
    spec::{LayerSpec, NetworkKind, NetworkSpec},
    Layer, NetError, Result,
};
use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::{BoundOptions, Method, Net, Spec, SpecBounds};
use dual_core::{DualNetwork, DualNode, DualOptions, DualSource, Inputs, IntervalRows};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;

/// A network: layers in order, each reading the previous output (Sequential) or, for Dense
/// layers, several earlier outputs (DenseSequential). Output 0 is the input.
pub struct Network {
    kind: NetworkKind,
    name: String,
    input_shape: Vec<usize>,
    layers: Vec<Box<dyn Layer>>,
}

impl Network {
    /// A network from layers built in code (custom layers included).
    pub fn new(kind: NetworkKind, name: &str, input_shape: &[usize], layers: Vec<Box<dyn Layer>>) -> Result<Self> {
        if layers.is_empty() {
            return Err(NetError::BadArchitecture("a network needs at least one layer".into()));
        }
        for (k, l) in layers.iter().enumerate() {
            let t = k + 1;
            if let Inputs::LastM(m) = l.inputs() {
                if kind == NetworkKind::Sequential {
                    return Err(NetError::BadArchitecture(format!(
                        "layer {k} is a Dense layer; use a DenseSequential network for skip connections"
                    )));
                }
                if m > t {
                    if let crate::spec::LayerSpec::Dense { parts } = l.spec() {
                        if parts[..m - t].iter().any(|p| p.is_some()) {
                            return Err(NetError::BadArchitecture(format!(
                                "layer {k}: a Dense part reads an output before the network input"
                            )));
                        }
                    }
                }
            }
        }
        Ok(Network { kind, name: name.into(), input_shape: input_shape.to_vec(), layers })
    }

    /// Builds the architecture with parameters from `get`.
    fn from_spec_with(
        spec: &NetworkSpec,
        get: &mut crate::build::ParamSource,
        custom: Option<&CustomBuilder>,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        for (i, l) in spec.layers.iter().enumerate() {
            layers.push(build_layer_with(l, &format!("{i}."), get, custom)?);
        }
        Network::new(spec.kind, &spec.name, &spec.input_shape, layers)
    }

    /// A freshly initialised network (PyTorch's default initialisation), reproducible by `seed`.
    pub fn init(spec: &NetworkSpec, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut get = |_: &str, shape: &[usize], init: ParamInit| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = match init {
                ParamInit::Uniform { fan_in } => {
                    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                    (0..n).map(|_| rng.random_range(-b..b)).collect()
                }
                ParamInit::Ones => vec![1.0; n],
                ParamInit::Zeros => vec![0.0; n],
            };
            Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
        };
        Self::from_spec_with(spec, &mut get, None)
    }

    /// The architecture with the parameters of a state dict (names as in PyTorch: `0.weight`,
    /// `4.Ws.2.bias`, ...). Errors name a missing or mis-shaped tensor, or tensors left unused.
    pub fn from_state_dict(
        spec: &NetworkSpec,
        tensors: &[(String, Tensor)],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_state_dict_with(spec, tensors, dtype, device, None)
    }

    /// [`Network::from_state_dict`] with a builder for the description's `Custom` layers.
    pub fn from_state_dict_with(
        spec: &NetworkSpec,
        tensors: &[(String, Tensor)],
        dtype: DType,
        device: &Device,
        custom: Option<&CustomBuilder>,
    ) -> Result<Self> {
        let map: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut used = std::collections::HashSet::new();
        let mut get = |name: &str, shape: &[usize], _: ParamInit| -> Result<Tensor> {
            let t = map.get(name).ok_or_else(|| NetError::MissingTensor {
                name: name.into(),
                available: summarize(tensors.iter().map(|(n, _)| n.as_str())),
            })?;
            if t.dims() != shape {
                return Err(NetError::WrongShape {
                    name: name.into(),
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            used.insert(name.to_string());
            Ok(t.to_device(device)?.to_dtype(dtype)?)
        };
        let net = Self::from_spec_with(spec, &mut get, custom)?;
        let unused: Vec<&str> = tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .collect();
        if !unused.is_empty() {
            return Err(NetError::UnusedTensors(summarize(unused.into_iter())));
        }
        Ok(net)
    }

    /// The architecture description.
    pub fn spec(&self) -> NetworkSpec {
        NetworkSpec {
            kind: self.kind,
            input_shape: self.input_shape.clone(),
            layers: self.layers.iter().map(|l| l.spec()).collect(),
            name: self.name.clone(),
        }
    }

    /// The device the parameters live on (CPU for a network without parameters).
    pub fn device(&self) -> Device {
        self.params().first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu)
    }

    /// Shape of one input (without batch).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Every parameter with its full name.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (n, p) in l.params() {
                v.push((format!("{i}.{n}"), p));
            }
        }
        v
    }

    /// The trainable parameters (BatchNorm running statistics excluded).
    pub fn trainable(&self) -> Vec<Var> {
        self.params().into_iter().filter(|(n, _)| !n.contains("running_")).map(|(_, v)| v).collect()
    }

    /// The parameters as plain tensors.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.params().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect()
    }

    /// A copy in another dtype (e.g. f64 for checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let sd = self.state_dict();
        let device = sd.first().map(|(_, t)| t.device().clone()).unwrap_or(Device::Cpu);
        Network::from_state_dict(&self.spec(), &sd, dtype, &device)
    }

    /// All outputs of a forward pass: `outs[0] = x`, `outs[t]` the output of layer `t`. When a
    /// layer fails on an input of the wrong shape, the error says which shape the network
    /// expects rather than which matmul failed.
    pub fn forward_all(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_all_unchecked(x).map_err(|e| match self.check_input(x) {
            Err(shape) => shape,
            Ok(()) => e,
        })
    }

    /// [`Network::forward_all`] without the shape diagnosis.
    fn forward_all_unchecked(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut outs = vec![x.clone()];
        for (k, l) in self.layers.iter().enumerate() {
            let t = k + 1;
            let xs: Vec<Option<&Tensor>> = l.inputs().indices(t).into_iter().map(|i| i.map(|i| &outs[i])).collect();
            let y = l.forward(&xs)?;
            outs.push(y);
        }
        Ok(outs)
    }

    /// The forward pass (logits). Where nothing is differentiated (inside [`crate::no_grad`], an
    /// input that tracks no ops) and every layer offers [`Layer::rows`] on a plain chain, the
    /// batch runs fused, one slice per thread through every layer (the same numbers up to the
    /// gemm's blocking); otherwise layer by layer.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.forward_fused(x)? {
            return Ok(y);
        }
        Ok(self.forward_all(x)?.pop().expect("at least one layer"))
    }

    /// [`Network::forward`]'s fused pass alone; `None` where it does not apply.
    pub fn forward_fused(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if crate::grad_enabled() || x.track_op() || !x.device().is_cpu() || self.check_input(x).is_err() {
            return Ok(None);
        }
        let Some((maps, _)) = self.row_maps()? else { return Ok(None) };
        Ok(dual_core::interval_rows::forward_chain(&maps, x, dual_core::CpuPool::of_candle_ops())?)
    }

    /// Every layer's row map ([`Layer::rows`]) and the output shapes they give
    /// (`[input, out_1, …]`, without batch), where the layers form a plain chain and each offers
    /// one; `None` otherwise.
    #[allow(clippy::type_complexity)]
    fn row_maps(&self) -> Result<Option<(Vec<Box<dyn IntervalRows>>, Vec<Vec<usize>>)>> {
        let mut shapes = vec![self.input_shape.clone()];
        let mut maps = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter().enumerate() {
            if l.inputs().indices(k + 1) != [Some(k)] {
                return Ok(None);
            }
            let Some(map) = l.rows(&shapes[k]) else { return Ok(None) };
            let map = map?;
            shapes.push(map.out_shape(&shapes[k])?);
            maps.push(map);
        }
        Ok(Some((maps, shapes)))
    }

    /// The dual nodes for the batch `x` (its forward pass fixes shapes and batch statistics).
    pub fn dual_nodes(&self, x: &Tensor) -> Result<Vec<DualNode>> {
        self.check_input(x)?;
        if let Some(outs) = self.nominal_outputs_by_shape(x)? {
            return self.dual_nodes_from_outputs(&outs);
        }
        Ok(self.dual_nodes_and_logits(x)?.0)
    }

    /// Zero outputs of one example, shaped as the layers' outputs for `x`, where every dual reads
    /// only its input's shape and every layer gives its output shape through its rows map on a
    /// plain chain ([`Layer::rows`]): the dual nodes without a forward pass (a tenth of IBP's
    /// whole bound on the papers' Fashion-MNIST model at batch 50). `None` otherwise.
    fn nominal_outputs_by_shape(&self, x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if !self.spec().layers.iter().all(dual_reads_shape_only) {
            return Ok(None);
        }
        let Some((_, shapes)) = self.row_maps()? else { return Ok(None) };
        let mut outs = vec![x.narrow(0, 0, 1)?];
        for shape in &shapes[1..] {
            outs.push(Tensor::zeros([&[1][..], shape].concat(), x.dtype(), x.device())?);
        }
        Ok(Some(outs))
    }

    /// [`Network::dual_nodes`] and the logits of the forward pass that fixed them: of the first
    /// example where the duals read only shapes, else of the whole batch.
    pub fn dual_nodes_and_logits(&self, x: &Tensor) -> Result<(Vec<DualNode>, Tensor)> {
        self.check_input(x)?;
        // The duals of the built-in layers but BatchNorm read only their input's shape, which the
        // first example gives at a fraction of the batch's forward pass.
        let shapes_only = self.spec().layers.iter().all(dual_reads_shape_only);
        let nominal = if shapes_only && x.dim(0)? > 1 { x.narrow(0, 0, 1)? } else { x.clone() };
        let mut outs = self.forward_all(&nominal)?;
        let nodes = self.dual_nodes_from_outputs(&outs)?;
        Ok((nodes, outs.pop().expect("at least one layer")))
    }

    /// The dual nodes given the outputs of a forward pass already made (`outs[0]` the input,
    /// `outs[t]` layer `t`'s output, as [`Network::forward_all`] gives them).
    pub fn dual_nodes_from_outputs(&self, outs: &[Tensor]) -> Result<Vec<DualNode>> {
        if outs.len() != self.layers.len() + 1 {
            return Err(NetError::Dual(dual_core::DualError::shape(format!(
                "{} outputs for a network of {} layers (expected the input and one per layer)",
                outs.len(),
                self.layers.len()
            ))));
        }
        let mut nodes = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter().enumerate() {
            let xs: Vec<Option<&Tensor>> = l.inputs().indices(k + 1).into_iter().map(|i| i.map(|i| &outs[i])).collect();
            nodes.push(l.dual(&xs)?);
        }
        Ok(nodes)
    }

    /// The dual network for inputs `x` in the input set `input` (layer-wise bounds computed).
    pub fn dual(&self, x: &Tensor, input: Box<dyn DualSource>, opts: &DualOptions) -> Result<DualNetwork> {
        let nodes = self.dual_nodes(x)?;
        Ok(DualNetwork::build(x, input, nodes, opts)?)
    }

    /// Lower bounds of `C f(x')` over the input set by a method of the bound family (IBP, CROWN,
    /// CROWN-IBP, α-CROWN; see [`dual_core::bounds`]). α-CROWN also builds the exact dual: its
    /// layer-wise bounds are intersected with the dual's and its result is never below the dual's
    /// (not on a network with a layer the exact dual does not take: MaxPool2d).
    pub fn spec_bounds(
        &self,
        x: &Tensor,
        input: Box<dyn DualSource>,
        spec: &Spec,
        method: Method,
        opts: &BoundOptions,
    ) -> Result<SpecBounds> {
        let no_exact_dual =
            |l: &LayerSpec| matches!(l, LayerSpec::MaxPool2d { .. } | LayerSpec::Sigmoid | LayerSpec::Tanh);
        if method == Method::AlphaCrown && !self.spec().layers.iter().any(no_exact_dual) {
            let dual = self.dual(x, input, &DualOptions::default())?;
            let net = Net { nodes: dual.nodes(), x: dual.x(), input: dual.input() };
            return Ok(dual_core::bounds::spec_bounds(&net, spec, method, opts, Some(&dual))?);
        }
        let nodes = self.dual_nodes(x)?;
        let net = Net { nodes: &nodes, x, input: input.as_ref() };
        Ok(dual_core::bounds::spec_bounds(&net, spec, method, opts, None)?)
    }

    /// Lower bounds of the margins `z_y − z_j` (`[B, classes]`, 0 at `j = y`) by `method`.
    pub fn margin_bounds(
        &self,
        x: &Tensor,
        input: Box<dyn DualSource>,
        y: &[u32],
        method: Method,
        opts: &BoundOptions,
    ) -> Result<Tensor> {
        if method == Method::Ibp {
            // IBP's bound alone keeps no layer-wise box (`dual_core::bounds::margin_bounds`).
            let nodes = self.dual_nodes(x)?;
            let net = Net { nodes: &nodes, x, input: input.as_ref() };
            return Ok(dual_core::bounds::margin_bounds(&net, y, method, opts, None)?);
        }
        let out = self.forward(&x.narrow(0, 0, 1)?)?;
        let classes = out.elem_count();
        if out.rank() != 2 {
            return Err(NetError::Dual(dual_core::DualError::shape(format!(
                "margins need a flat output; the network gives {:?}",
                &out.dims()[1..]
            ))));
        }
        let spec = Spec::margins(y, classes, x.dtype(), x.device())?;
        Ok(self.spec_bounds(x, input, &spec, method, opts)?.lower)
    }

    /// Checks that `x` is `[B, *input_shape]`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.rank() != self.input_shape.len() + 1 || x.dims()[1..] != self.input_shape[..] {
            return Err(NetError::Dual(dual_core::DualError::shape(format!(
                "input has shape {:?}; the network `{}` expects [B, {}]",
                x.dims(),
                self.name,
                self.input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ))));
        }
        Ok(())
    }
}

fn summarize<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.len() > 12 {
        format!("{}, ... ({} in all)", v[..12].join(", "), v.len())
    } else {
        v.join(", ")
    }
}

/// Whether the layer's dual reads only the shape of its input (not the batch's values, as
/// BatchNorm's batch statistics do; a custom layer may).
fn dual_reads_shape_only(l: &LayerSpec) -> bool {
    match l {
        LayerSpec::BatchNorm2d { .. } | LayerSpec::Custom { .. } => false,
        LayerSpec::Dense { parts } => parts.iter().flatten().all(dual_reads_shape_only),
        _ => true,
    }
}
