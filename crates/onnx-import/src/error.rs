//! Import errors: every one names the file, node or op at fault.

/// Why a model could not be imported or run.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX protobuf message.
    #[error("not a valid ONNX file: {0}")]
    Decode(String),
    /// An op we do not implement (never replaced by something else).
    #[error("unsupported op `{op}` (node `{node}`){detail}")]
    Unsupported {
        /// The ONNX op type.
        op: String,
        /// The node's name (or its first output when unnamed).
        node: String,
        /// More about why, or empty.
        detail: String,
    },
    /// A node whose inputs, attributes or shapes are inconsistent.
    #[error("node `{node}` ({op}): {msg}")]
    Node {
        /// The node's name.
        node: String,
        /// The ONNX op type.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// The graph as a whole is malformed (missing value, several inputs, a cycle, ...).
    #[error("bad graph: {0}")]
    Graph(String),
    /// The graph cannot become a `nets::Network` for the bound engine.
    #[error("cannot lower the graph for bounds: {0}")]
    Lower(String),
    /// An error from Candle while building the network.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// An error from `nets` while building the network.
    #[error("{0}")]
    Net(#[from] nets::NetError),
}

/// Result with [`ImportError`].
pub type Result<T> = std::result::Result<T, ImportError>;
