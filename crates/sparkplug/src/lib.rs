//! Sparkplug B (Eclipse Sparkplug 3.0) for twinguard as a *host application*.
//!
//! [`Payload`] and [`Metric`] are the protobuf messages of Eclipse Tahu's
//! `sparkplug_b.proto`, written out with prost's derive (field numbers as in the `.proto`;
//! no build script, no `protoc`). Only scalar metric values are modelled; data sets,
//! templates, metadata and property sets are skipped when decoding.
//!
//! [`Host`] follows each edge node through its births, data and deaths: it resolves
//! aliases, checks the sequence number (0..=255, wrapping) of every message, refuses data
//! from a node or device that has not been born (or has died), and answers any gap with a
//! rebirth request (`NCMD` with `Node Control/Rebirth = true`) for the caller to publish.
//! It does no I/O and reads no clock. [`EdgeNode`] is the other side, for simulators and
//! tests.

use std::collections::HashMap;

use prost::Message;

/// Largest Sparkplug payload decoded.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The metric a host writes to make an edge node publish its births again.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// `Payload` of `sparkplug_b.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` of `sparkplug_b.proto` (scalar values only).
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// The scalar members of `Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// Sparkplug B data types (the scalar ones).
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SparkplugError {
    #[error("payload of {0} bytes is larger than the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("not a Sparkplug B payload: {0}")]
    Decode(String),
    #[error("topic {0:?} is not spBv1.0/GROUP/TYPE/NODE[/DEVICE]")]
    Topic(String),
}

/// Decodes a payload, bounded in size; never panics.
pub fn decode(bytes: &[u8]) -> Result<Payload, SparkplugError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(SparkplugError::TooLarge(bytes.len()));
    }
    Payload::decode(bytes).map_err(|e| SparkplugError::Decode(e.to_string()))
}

pub fn encode(p: &Payload) -> Vec<u8> {
    p.encode_to_vec()
}

/// The message types of the topic namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "NBIRTH" => Kind::NBirth,
            "NDATA" => Kind::NData,
            "NDEATH" => Kind::NDeath,
            "NCMD" => Kind::NCmd,
            "DBIRTH" => Kind::DBirth,
            "DDATA" => Kind::DData,
            "DDEATH" => Kind::DDeath,
            "DCMD" => Kind::DCmd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NBirth => "NBIRTH",
            Kind::NData => "NDATA",
            Kind::NDeath => "NDEATH",
            Kind::NCmd => "NCMD",
            Kind::DBirth => "DBIRTH",
            Kind::DData => "DDATA",
            Kind::DDeath => "DDEATH",
            Kind::DCmd => "DCMD",
        }
    }

    fn is_device(self) -> bool {
        matches!(self, Kind::DBirth | Kind::DData | Kind::DDeath | Kind::DCmd)
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub group: String,
    pub kind: Kind,
    pub node: String,
    pub device: Option<String>,
}

impl Topic {
    pub fn parse(topic: &str) -> Result<Topic, SparkplugError> {
        let bad = || SparkplugError::Topic(topic.chars().take(200).collect());
        let parts: Vec<&str> = topic.split('/').collect();
        let (ns, group, kind, node, device) = match parts.as_slice() {
            [ns, g, k, n] => (*ns, *g, *k, *n, None),
            [ns, g, k, n, d] => (*ns, *g, *k, *n, Some(*d)),
            _ => return Err(bad()),
        };
        let kind = Kind::parse(kind).ok_or_else(bad)?;
        if ns != NAMESPACE
            || group.is_empty()
            || node.is_empty()
            || kind.is_device() != device.is_some()
            || device.is_some_and(str::is_empty)
        {
            return Err(bad());
        }
        Ok(Topic {
            group: group.into(),
            kind,
            node: node.into(),
            device: device.map(Into::into),
        })
    }

    pub fn render(&self) -> String {
        match &self.device {
            Some(d) => format!(
                "{NAMESPACE}/{}/{}/{}/{d}",
                self.group,
                self.kind.as_str(),
                self.node
            ),
            None => format!(
                "{NAMESPACE}/{}/{}/{}",
                self.group,
                self.kind.as_str(),
                self.node
            ),
        }
    }
}

/// A metric value as a number, by its declared data type. Strings, bytes and nulls are
/// not numbers.
pub fn number(datatype: u32, v: &Value) -> Option<f64> {
    use datatype::*;
    Some(match (datatype, v) {
        (INT8, Value::Int(x)) => f64::from(*x as u8 as i8),
        (INT16, Value::Int(x)) => f64::from(*x as u16 as i16),
        (INT32, Value::Int(x)) => f64::from(*x as i32),
        (UINT8 | UINT16 | UINT32, Value::Int(x)) => f64::from(*x),
        (INT64, Value::Long(x)) => *x as i64 as f64,
        (UINT64 | UINT32 | DATETIME, Value::Long(x)) => *x as f64,
        (FLOAT, Value::Float(x)) => f64::from(*x),
        (DOUBLE, Value::Double(x)) => *x,
        (BOOLEAN, Value::Boolean(b)) => f64::from(u8::from(*b)),
        _ => return None,
    })
}

/// One metric value a message carried, resolved to its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub node: String,
    pub device: Option<String>,
    pub metric: String,
    pub value: Option<f64>,
    /// The metric's timestamp, else the payload's (ms since the Unix epoch).
    pub t_ms: Option<i64>,
}

/// Why a message (or a metric in it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Not decodable, or a topic outside the namespace.
    Malformed,
    /// Data or a device birth from a node (or device) that is not born.
    NotBorn,
    /// A sequence number other than the one expected.
    Sequence,
    /// An alias or name the birth did not declare, or a value not of its declared type.
    UnknownMetric,
    /// A death certificate whose bdSeq does not match the birth's.
    StaleDeath,
}

/// What a message meant.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub refused: Vec<(Refusal, String)>,
    /// A rebirth request to publish: (topic, payload).
    pub rebirth: Option<(String, Vec<u8>)>,
    /// The node or device went offline (a death, or a birth that replaced it): its values
    /// are no longer current.
    pub offline: Option<String>,
}

#[derive(Debug, Default)]
struct Metrics {
    /// alias → (name, datatype)
    by_alias: HashMap<u64, (String, u32)>,
    /// name → datatype
    by_name: HashMap<String, u32>,
}

impl Metrics {
    fn learn(&mut self, metrics: &[Metric]) -> Vec<String> {
        let mut problems = Vec::new();
        self.by_alias.clear();
        self.by_name.clear();
        for m in metrics {
            let (Some(name), Some(dt)) = (&m.name, m.datatype) else {
                problems.push("a birth metric without a name or a data type".to_string());
                continue;
            };
            if let Some(a) = m.alias {
                self.by_alias.insert(a, (name.clone(), dt));
            }
            self.by_name.insert(name.clone(), dt);
        }
        problems
    }

    fn resolve(&self, m: &Metric) -> Option<(String, u32)> {
        if let Some(name) = &m.name {
            return self.by_name.get(name).map(|dt| (name.clone(), *dt));
        }
        m.alias.and_then(|a| self.by_alias.get(&a).cloned())
    }
}

#[derive(Debug, Default)]
struct NodeState {
    /// Messages refused since a rebirth was requested (0: none requested).
    awaiting_rebirth: u32,
    online: bool,
    bd_seq: Option<u64>,
    next_seq: u64,
    metrics: Metrics,
    devices: HashMap<String, Metrics>,
}

/// The host application's view of every edge node of one group.
#[derive(Debug)]
pub struct Host {
    group: String,
    nodes: HashMap<String, NodeState>,
    /// Most edge nodes tracked (bounded memory against a flood of invented node names).
    max_nodes: usize,
}

impl Host {
    pub fn new(group: &str) -> Host {
        Host {
            group: group.into(),
            nodes: HashMap::new(),
            max_nodes: 10_000,
        }
    }

    /// The topic filter to subscribe to.
    pub fn filter(&self) -> String {
        format!("{NAMESPACE}/{}/#", self.group)
    }

    fn rebirth(&self, node: &str) -> (String, Vec<u8>) {
        let topic = Topic {
            group: self.group.clone(),
            kind: Kind::NCmd,
            node: node.into(),
            device: None,
        };
        let p = Payload {
            timestamp: None,
            metrics: vec![Metric {
                name: Some(REBIRTH_METRIC.into()),
                datatype: Some(datatype::BOOLEAN),
                value: Some(Value::Boolean(true)),
                ..Default::default()
            }],
            seq: None,
            uuid: None,
            body: None,
        };
        (topic.render(), encode(&p))
    }

    /// Handles one message received on `topic`.
    pub fn handle(&mut self, topic: &str, bytes: &[u8]) -> Outcome {
        let mut out = Outcome::default();
        let t = match Topic::parse(topic) {
            Ok(t) if t.group == self.group => t,
            Ok(t) => {
                out.refused.push((
                    Refusal::Malformed,
                    format!("group {:?} is not {:?}", t.group, self.group),
                ));
                return out;
            }
            Err(e) => {
                out.refused.push((Refusal::Malformed, e.to_string()));
                return out;
            }
        };
        if matches!(t.kind, Kind::NCmd | Kind::DCmd) {
            // Commands are ours (or another host's) to send, not data.
            return out;
        }
        let p = match decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                out.refused.push((Refusal::Malformed, e.to_string()));
                return out;
            }
        };
        if !self.nodes.contains_key(&t.node) && self.nodes.len() >= self.max_nodes {
            out.refused.push((
                Refusal::NotBorn,
                format!(
                    "more than {} edge nodes; {} ignored",
                    self.max_nodes, t.node
                ),
            ));
            return out;
        }
        let rebirth = self.rebirth(&t.node);
        let node = self.nodes.entry(t.node.clone()).or_default();
        let who = match &t.device {
            Some(d) => format!("{}/{d}", t.node),
            None => t.node.clone(),
        };
        match t.kind {
            Kind::NBirth => {
                if p.seq != Some(0) {
                    out.refused.push((
                        Refusal::Sequence,
                        format!("NBIRTH of {who} with seq {:?}, must be 0", p.seq),
                    ));
                    out.rebirth = ask_rebirth(node, &rebirth);
                    return out;
                }
                if node.online {
                    out.offline = Some(who.clone());
                }
                node.online = true;
                node.awaiting_rebirth = 0;
                node.next_seq = 1;
                node.devices.clear();
                node.bd_seq = p
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some("bdSeq"))
                    .and_then(|m| match m.value {
                        Some(Value::Long(x)) => Some(x),
                        Some(Value::Int(x)) => Some(u64::from(x)),
                        _ => None,
                    });
                for problem in node.metrics.learn(&p.metrics) {
                    out.refused
                        .push((Refusal::UnknownMetric, format!("{who}: {problem}")));
                }
                samples(&who, &t, &p, &node.metrics, &mut out);
            }
            Kind::NDeath => {
                let bd = p
                    .metrics
                    .iter()
                    .find(|m| m.name.as_deref() == Some("bdSeq"))
                    .and_then(|m| match m.value {
                        Some(Value::Long(x)) => Some(x),
                        Some(Value::Int(x)) => Some(u64::from(x)),
                        _ => None,
                    });
                if node.online && (node.bd_seq.is_none() || bd == node.bd_seq) {
                    node.online = false;
                    node.devices.clear();
                    out.offline = Some(who);
                } else {
                    out.refused.push((
                        Refusal::StaleDeath,
                        format!(
                            "NDEATH of {who} with bdSeq {bd:?}, the birth had {:?}",
                            node.bd_seq
                        ),
                    ));
                }
            }
            Kind::NData | Kind::DBirth | Kind::DData | Kind::DDeath => {
                if !node.online {
                    out.refused.push((
                        Refusal::NotBorn,
                        format!("{} from {who}, whose node is not born", t.kind.as_str()),
                    ));
                    out.rebirth = ask_rebirth(node, &rebirth);
                    return out;
                }
                let expected = node.next_seq;
                if p.seq != Some(expected) {
                    out.refused.push((
                        Refusal::Sequence,
                        format!(
                            "{} from {who} with seq {:?}, expected {expected}",
                            t.kind.as_str(),
                            p.seq
                        ),
                    ));
                    // The host cannot know what it missed: the node must start over.
                    node.online = false;
                    node.devices.clear();
                    out.offline = Some(t.node.clone());
                    out.rebirth = ask_rebirth(node, &rebirth);
                    return out;
                }
                node.next_seq = (expected + 1) % 256;
                match (t.kind, &t.device) {
                    (Kind::NData, _) => samples(&who, &t, &p, &node.metrics, &mut out),
                    (Kind::DBirth, Some(d)) => {
                        let m = node.devices.entry(d.clone()).or_default();
                        for problem in m.learn(&p.metrics) {
                            out.refused
                                .push((Refusal::UnknownMetric, format!("{who}: {problem}")));
                        }
                        samples(&who, &t, &p, m, &mut out);
                    }
                    (Kind::DData, Some(d)) => match node.devices.get(d) {
                        Some(m) => samples(&who, &t, &p, m, &mut out),
                        None => {
                            out.refused.push((
                                Refusal::NotBorn,
                                format!("DDATA from {who}, which has no DBIRTH"),
                            ));
                            out.rebirth = ask_rebirth(node, &rebirth);
                        }
                    },
                    (Kind::DDeath, Some(d)) => {
                        node.devices.remove(d);
                        out.offline = Some(who);
                    }
                    _ => {}
                }
            }
            Kind::NCmd | Kind::DCmd => {}
        }
        out
    }
}

/// A rebirth request, unless one is outstanding: asked again only every 16 refused
/// messages, so that a node that lost the request is asked again without being flooded.
fn ask_rebirth(node: &mut NodeState, request: &(String, Vec<u8>)) -> Option<(String, Vec<u8>)> {
    let ask = node.awaiting_rebirth.is_multiple_of(16);
    node.awaiting_rebirth = node.awaiting_rebirth.saturating_add(1);
    ask.then(|| request.clone())
}

fn samples(who: &str, t: &Topic, p: &Payload, metrics: &Metrics, out: &mut Outcome) {
    for m in &p.metrics {
        if m.name.as_deref() == Some("bdSeq")
            || m.name
                .as_deref()
                .is_some_and(|n| n.starts_with("Node Control/"))
        {
            continue;
        }
        let Some((name, dt)) = metrics.resolve(m) else {
            out.refused.push((
                Refusal::UnknownMetric,
                format!(
                    "{who}: metric {} was not declared in its birth",
                    m.name
                        .clone()
                        .or(m.alias.map(|a| format!("alias {a}")))
                        .unwrap_or_else(|| "without name or alias".into())
                ),
            ));
            continue;
        };
        let value = if m.is_null == Some(true) {
            None
        } else {
            match m.value.as_ref().map(|v| number(dt, v)) {
                Some(Some(x)) => Some(x),
                Some(None) | None => {
                    out.refused.push((
                        Refusal::UnknownMetric,
                        format!("{who}: metric {name} has no value of its declared type {dt}"),
                    ));
                    continue;
                }
            }
        };
        out.samples.push(Sample {
            node: t.node.clone(),
            device: t.device.clone(),
            metric: name,
            value,
            t_ms: m
                .timestamp
                .or(p.timestamp)
                .and_then(|x| i64::try_from(x).ok()),
        });
    }
}

/// A device and its metrics with their current values (None: declared as null).
pub type DeviceBirth = (String, Vec<(String, Option<f64>)>);

/// The edge node side: births and data with sequence numbers, for simulators and tests.
#[derive(Debug)]
pub struct EdgeNode {
    pub group: String,
    pub node: String,
    seq: u64,
    bd_seq: u64,
    /// device → metric names in alias order.
    devices: Vec<(String, Vec<String>)>,
}

impl EdgeNode {
    pub fn new(group: &str, node: &str) -> EdgeNode {
        EdgeNode {
            group: group.into(),
            node: node.into(),
            seq: 0,
            bd_seq: 0,
            devices: Vec::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = (self.seq + 1) % 256;
        s
    }

    fn topic(&self, kind: Kind, device: Option<&str>) -> String {
        Topic {
            group: self.group.clone(),
            kind,
            node: self.node.clone(),
            device: device.map(Into::into),
        }
        .render()
    }

    /// The node's death certificate (its MQTT will), for the bdSeq of the next birth.
    pub fn death(&self) -> (String, Vec<u8>) {
        let p = Payload {
            metrics: vec![Metric {
                name: Some("bdSeq".into()),
                datatype: Some(datatype::INT64),
                value: Some(Value::Long(self.bd_seq)),
                ..Default::default()
            }],
            ..Default::default()
        };
        (self.topic(Kind::NDeath, None), encode(&p))
    }

    /// NBIRTH (seq 0) followed by a DBIRTH per device declaring `metrics` (Double) with
    /// aliases 1, 2, ... and their current values.
    pub fn births(&mut self, t_ms: u64, devices: &[DeviceBirth]) -> Vec<(String, Vec<u8>)> {
        self.seq = 0;
        let mut out = Vec::new();
        let nbirth = Payload {
            timestamp: Some(t_ms),
            seq: Some(self.next_seq()),
            metrics: vec![
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(datatype::INT64),
                    value: Some(Value::Long(self.bd_seq)),
                    ..Default::default()
                },
                Metric {
                    name: Some(REBIRTH_METRIC.into()),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(Value::Boolean(false)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        out.push((self.topic(Kind::NBirth, None), encode(&nbirth)));
        self.devices.clear();
        for (device, metrics) in devices {
            let p = Payload {
                timestamp: Some(t_ms),
                seq: Some(self.next_seq()),
                metrics: metrics
                    .iter()
                    .enumerate()
                    .map(|(i, (name, v))| Metric {
                        name: Some(name.clone()),
                        alias: Some(i as u64 + 1),
                        timestamp: Some(t_ms),
                        datatype: Some(datatype::DOUBLE),
                        is_null: v.is_none().then_some(true),
                        value: v.map(Value::Double),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            out.push((self.topic(Kind::DBirth, Some(device)), encode(&p)));
            self.devices.push((
                device.clone(),
                metrics.iter().map(|(n, _)| n.clone()).collect(),
            ));
        }
        out
    }

    /// DDATA for a device: (metric, t_ms, value) by alias.
    pub fn data(
        &mut self,
        device: &str,
        samples: &[(String, u64, f64)],
    ) -> Option<(String, Vec<u8>)> {
        let names = &self.devices.iter().find(|(d, _)| d == device)?.1;
        let metrics = samples
            .iter()
            .filter_map(|(name, t, v)| {
                let alias = names.iter().position(|n| n == name)? as u64 + 1;
                Some(Metric {
                    alias: Some(alias),
                    timestamp: Some(*t),
                    datatype: Some(datatype::DOUBLE),
                    value: Some(Value::Double(*v)),
                    ..Default::default()
                })
            })
            .collect();
        let p = Payload {
            timestamp: samples.last().map(|s| s.1),
            seq: Some(self.next_seq()),
            metrics,
            ..Default::default()
        };
        Some((self.topic(Kind::DData, Some(device)), encode(&p)))
    }

    /// True if `payload` on `topic` is a rebirth request for this node.
    pub fn is_rebirth_request(&self, topic: &str, payload: &[u8]) -> bool {
        topic == self.topic(Kind::NCmd, None)
            && decode(payload).is_ok_and(|p| {
                p.metrics.iter().any(|m| {
                    m.name.as_deref() == Some(REBIRTH_METRIC)
                        && m.value == Some(Value::Boolean(true))
                })
            })
    }

    /// The next birth comes after a death: a new bdSeq.
    pub fn next_session(&mut self) {
        self.bd_seq = (self.bd_seq + 1) % 256;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    fn dev() -> Vec<DeviceBirth> {
        vec![(
            "tank".into(),
            vec![("level".into(), Some(1.5)), ("inflow".into(), None)],
        )]
    }

    #[test]
    fn birth_then_data_by_alias() {
        let mut edge = EdgeNode::new("plant", "gw1");
        let mut host = Host::new("plant");
        for (t, b) in edge.births(1000, &dev()) {
            let o = host.handle(&t, &b);
            assert!(o.refused.is_empty(), "{o:?}");
        }
        let (t, b) = edge
            .data(
                "tank",
                &[("level".into(), 2000, 1.6), ("inflow".into(), 2000, 21.0)],
            )
            .unwrap();
        assert_eq!(t, "spBv1.0/plant/DDATA/gw1/tank");
        let o = host.handle(&t, &b);
        assert_eq!(o.refused, vec![]);
        assert_eq!(o.samples.len(), 2);
        assert_eq!(o.samples[0].metric, "level");
        assert_eq!(o.samples[0].value, Some(1.6));
        assert_eq!(o.samples[0].t_ms, Some(2000));
        assert_eq!(o.samples[0].device.as_deref(), Some("tank"));
    }

    #[test]
    fn a_gap_in_sequence_asks_for_a_rebirth_and_data_waits_for_it() {
        let mut edge = EdgeNode::new("plant", "gw1");
        let mut host = Host::new("plant");
        for (t, b) in edge.births(1000, &dev()) {
            host.handle(&t, &b);
        }
        let _lost = edge.data("tank", &[("level".into(), 2000, 1.6)]).unwrap();
        let (t, b) = edge.data("tank", &[("level".into(), 3000, 1.7)]).unwrap();
        let o = host.handle(&t, &b);
        assert_eq!(o.refused[0].0, Refusal::Sequence);
        assert!(o.samples.is_empty());
        let (rt, rb) = o.rebirth.clone().unwrap();
        assert_eq!(rt, "spBv1.0/plant/NCMD/gw1");
        assert!(edge.is_rebirth_request(&rt, &rb));
        // Until the node is born again, its data is refused, and the request is not
        // repeated for every message.
        let (t, b) = edge.data("tank", &[("level".into(), 4000, 1.8)]).unwrap();
        let o = host.handle(&t, &b);
        assert_eq!(o.refused[0].0, Refusal::NotBorn);
        assert_eq!(o.rebirth, None);
        for (t, b) in edge.births(5000, &dev()) {
            assert!(host.handle(&t, &b).refused.is_empty());
        }
        let (t, b) = edge.data("tank", &[("level".into(), 6000, 1.9)]).unwrap();
        assert_eq!(host.handle(&t, &b).samples[0].value, Some(1.9));
    }

    #[test]
    fn sequence_wraps_after_255() {
        let mut edge = EdgeNode::new("g", "n");
        let mut host = Host::new("g");
        for (t, b) in edge.births(0, &dev()) {
            host.handle(&t, &b);
        }
        for i in 0..600u64 {
            let (t, b) = edge.data("tank", &[("level".into(), i, 1.0)]).unwrap();
            let o = host.handle(&t, &b);
            assert!(o.refused.is_empty(), "message {i}: {o:?}");
        }
    }

    #[test]
    fn death_needs_the_births_bdseq() {
        let mut edge = EdgeNode::new("g", "n");
        let mut host = Host::new("g");
        let (old_t, old_death) = edge.death();
        edge.next_session();
        for (t, b) in edge.births(0, &dev()) {
            host.handle(&t, &b);
        }
        // The will of an earlier session arrives late: refused, the node stays online.
        let o = host.handle(&old_t, &old_death);
        assert_eq!(o.refused[0].0, Refusal::StaleDeath);
        let (t, d) = edge.death();
        let o = host.handle(&t, &d);
        assert_eq!(o.offline.as_deref(), Some("n"));
        let (t, b) = edge.data("tank", &[("level".into(), 1, 1.0)]).unwrap();
        assert_eq!(host.handle(&t, &b).refused[0].0, Refusal::NotBorn);
    }

    #[test]
    fn undeclared_metrics_wrong_types_and_bad_topics_are_refused() {
        let mut edge = EdgeNode::new("g", "n");
        let mut host = Host::new("g");
        for (t, b) in edge.births(0, &dev()) {
            host.handle(&t, &b);
        }
        let p = Payload {
            seq: Some(2),
            metrics: vec![
                Metric {
                    alias: Some(99),
                    value: Some(Value::Double(1.0)),
                    ..Default::default()
                },
                Metric {
                    alias: Some(1),
                    value: Some(Value::String("high".into())),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let o = host.handle("spBv1.0/g/DDATA/n/tank", &encode(&p));
        let kinds: Vec<Refusal> = o.refused.iter().map(|r| r.0).collect();
        assert_eq!(kinds, vec![Refusal::UnknownMetric, Refusal::UnknownMetric]);
        for topic in [
            "spBv1.0/g/DDATA/n",
            "spBv1.0/g/NDATA/n/x",
            "spAv1.0/g/NDATA/n",
            "spBv1.0/other/NDATA/n",
            "x",
        ] {
            assert_eq!(
                host.handle(topic, &[]).refused[0].0,
                Refusal::Malformed,
                "{topic}"
            );
        }
        assert_eq!(
            host.handle("spBv1.0/g/DDATA/n/tank", &[0xff, 0xff, 0xff])
                .refused[0]
                .0,
            Refusal::Malformed
        );
    }

    #[test]
    fn integer_types_are_read_by_their_declared_width_and_sign() {
        assert_eq!(number(datatype::INT8, &Value::Int(0xff)), Some(-1.0));
        assert_eq!(number(datatype::INT16, &Value::Int(0xfffe)), Some(-2.0));
        assert_eq!(number(datatype::INT32, &Value::Int(u32::MAX)), Some(-1.0));
        assert_eq!(
            number(datatype::UINT32, &Value::Int(u32::MAX)),
            Some(4294967295.0)
        );
        assert_eq!(number(datatype::INT64, &Value::Long(u64::MAX)), Some(-1.0));
        assert_eq!(number(datatype::BOOLEAN, &Value::Boolean(true)), Some(1.0));
        assert_eq!(number(datatype::DOUBLE, &Value::Float(1.0)), None);
        assert_eq!(number(datatype::STRING, &Value::String("1".into())), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_anything_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut host = Host::new("g");
            let _ = host.handle("spBv1.0/g/NBIRTH/n", &bytes);
            let _ = host.handle("spBv1.0/g/DDATA/n/d", &bytes);
        }

        #[test]
        fn payloads_round_trip(seq in 0u64..256, v in proptest::prelude::any::<f64>(), name in "[a-z./]{1,20}") {
            let p = Payload {
                seq: Some(seq),
                timestamp: Some(5),
                metrics: vec![Metric { name: Some(name), datatype: Some(datatype::DOUBLE), value: Some(Value::Double(v)), ..Default::default() }],
                ..Default::default()
            };
            let q = decode(&encode(&p)).unwrap();
            proptest::prop_assert_eq!(q.seq, p.seq);
            proptest::prop_assert_eq!(&q.metrics[0].name, &p.metrics[0].name);
            match (&q.metrics[0].value, v) {
                (Some(Value::Double(x)), v) if v.is_nan() => proptest::prop_assert!(x.is_nan()),
                (x, v) => proptest::prop_assert_eq!(x, &Some(Value::Double(v))),
            }
        }
    }
}
