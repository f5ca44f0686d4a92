//! The parts of an ONNX model (`onnx.proto`, ModelProto) the scanner reads: operator
//! domains, external-data references and metadata. Field numbers are ONNX's; every other
//! field is skipped by the decoder, so any valid ONNX file decodes.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
    #[prost(message, repeated, tag = "25")]
    pub functions: Vec<FunctionProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0: data in the file; 1: EXTERNAL.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct FunctionProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "7")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "10")]
    pub domain: String,
}

/// The operator domains of the standard: anything else is a custom operator that needs
/// code outside the model runtime.
pub const STANDARD_DOMAINS: [&str; 3] = ["", "ai.onnx", "ai.onnx.ml"];

/// What the scanner needs from a decoded model.
pub struct Facts {
    /// (where, domain) of every operator outside the standard domains.
    pub custom_domains: Vec<(String, String)>,
    /// (tensor, location) of every tensor whose data lives outside the file.
    pub external_data: Vec<(String, String)>,
    pub metadata: Vec<(String, String)>,
}

/// Subgraphs nest (If, Loop, Scan); deeper than this is refused as a decoding bomb.
const MAX_DEPTH: usize = 64;

fn walk_graph(g: &GraphProto, path: &str, depth: usize, facts: &mut Facts) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("subgraphs nest deeper than {MAX_DEPTH}"));
    }
    for t in &g.initializer {
        tensor(t, path, facts);
    }
    for n in &g.node {
        let at = format!("{path}/{}({})", n.name, n.op_type);
        if !STANDARD_DOMAINS.contains(&n.domain.as_str()) {
            facts.custom_domains.push((at.clone(), n.domain.clone()));
        }
        for a in &n.attribute {
            if let Some(t) = &a.t {
                tensor(t, &at, facts);
            }
            if let Some(sub) = &a.g {
                walk_graph(sub, &format!("{at}.{}", a.name), depth + 1, facts)?;
            }
            for sub in &a.graphs {
                walk_graph(sub, &format!("{at}.{}", a.name), depth + 1, facts)?;
            }
        }
    }
    Ok(())
}

fn tensor(t: &TensorProto, path: &str, facts: &mut Facts) {
    if t.data_location == 1 || !t.external_data.is_empty() {
        let location = t
            .external_data
            .iter()
            .find(|e| e.key == "location")
            .map_or_else(|| "(no location)".to_string(), |e| e.value.clone());
        facts
            .external_data
            .push((format!("{path}/{}", t.name), location));
    }
}

/// Decodes an ONNX model and collects what the scanner reports.
pub fn facts(bytes: &[u8]) -> Result<Facts, String> {
    let m = ModelProto::decode(bytes).map_err(|e| format!("is not an ONNX model: {e}"))?;
    if m.ir_version <= 0 || m.graph.is_none() {
        return Err("is not an ONNX model: no IR version or no graph".into());
    }
    let mut facts = Facts {
        custom_domains: Vec::new(),
        external_data: Vec::new(),
        metadata: m
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
    };
    for o in &m.opset_import {
        if !STANDARD_DOMAINS.contains(&o.domain.as_str()) {
            facts
                .custom_domains
                .push(("opset_import".into(), o.domain.clone()));
        }
    }
    if let Some(g) = &m.graph {
        walk_graph(g, "graph", 0, &mut facts)?;
    }
    for f in &m.functions {
        for n in &f.node {
            if !STANDARD_DOMAINS.contains(&n.domain.as_str()) {
                facts.custom_domains.push((
                    format!("function {}/{}({})", f.name, n.name, n.op_type),
                    n.domain.clone(),
                ));
            }
        }
    }
    Ok(facts)
}
