//! The configuration file: ingest limits, the trust actuation requires, zones, sources and
//! conduits (IEC 62443). [`Config::parse`] reports every error it finds, each with its line
//! and column, so that `twinguard check-config` can explain all of them at once.

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The configuration the demo runs with when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");
/// Largest configuration file accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ingest: ingest::IngestConfig,
    #[serde(default)]
    pub actuation: Actuation,
    pub twinguard: Node,
    #[serde(default)]
    pub zones: Vec<Zone>,
    #[serde(default)]
    pub sources: Vec<Source>,
    #[serde(default)]
    pub conduits: Vec<Conduit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actuation {
    pub min_trust: Spanned<String>,
}

impl Default for Actuation {
    fn default() -> Self {
        Actuation {
            min_trust: Spanned::new(0..0, "channel".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub zone: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub id: Spanned<String>,
    pub security_level: Spanned<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub id: Spanned<String>,
    pub protocol: Spanned<String>,
    pub zone: Spanned<String>,
    pub broker: Spanned<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_unsigned: bool,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub mqtt_version: Option<Spanned<String>>,
    /// TLS to an external broker: the CA that signs the broker's certificate and, for
    /// mutual TLS, this client's certificate and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Spanned<String>,
    #[serde(default)]
    pub cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conduit {
    pub id: Spanned<String>,
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub protocols: Spanned<Vec<String>>,
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Where a broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    Embedded,
    External { host: String, port: u16 },
}

const PROTOCOLS: [&str; 2] = ["mqtt", "opcua"];

fn locate(text: &str, span: Range<usize>) -> (usize, usize) {
    let before = text.get(..span.start.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

impl Config {
    /// The trust level a `min_trust` name stands for.
    pub fn trust_level(name: &str) -> Option<ingest::Trust> {
        match name {
            "verified" => Some(ingest::Trust::Verified),
            "channel" => Some(ingest::Trust::Channel),
            "untrusted" => Some(ingest::Trust::Untrusted),
            _ => None,
        }
    }

    /// The trust actuation requires.
    pub fn min_trust(&self) -> ingest::Trust {
        Config::trust_level(self.actuation.min_trust.get_ref()).unwrap_or(ingest::Trust::Verified)
    }
}

impl Source {
    /// True when the source speaks MQTT 5.
    pub fn mqtt5(&self) -> bool {
        self.mqtt_version
            .as_ref()
            .is_some_and(|v| v.get_ref() == "5")
    }

    pub fn broker(&self) -> Result<Broker, String> {
        let b = self.broker.get_ref();
        if b == "embedded" {
            return Ok(Broker::Embedded);
        }
        b.rsplit_once(':')
            .and_then(|(h, p)| {
                p.parse::<u16>()
                    .ok()
                    .filter(|_| !h.is_empty())
                    .map(|p| Broker::External {
                        host: h.to_string(),
                        port: p,
                    })
            })
            .ok_or_else(|| format!("broker {b:?} is neither \"embedded\" nor HOST:PORT"))
    }
}

impl Config {
    /// Parses and checks a configuration; on failure returns every problem found.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(vec![ConfigError {
                line: 1,
                column: 1,
                message: format!(
                    "the file is {} bytes, more than the limit of {MAX_CONFIG_BYTES}",
                    text.len()
                ),
            }]);
        }
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| locate(text, s));
            vec![ConfigError {
                line,
                column,
                message: e.message().to_string(),
            }]
        })?;
        let mut errors = Vec::new();
        let mut err = |span: Range<usize>, message: String| {
            let (line, column) = locate(text, span);
            errors.push(ConfigError {
                line,
                column,
                message,
            });
        };
        let i = &config.ingest;
        if i.max_age_ms <= 0 {
            err(
                0..0,
                format!("ingest.max_age_ms must be positive, got {}", i.max_age_ms),
            );
        }
        if i.max_future_ms < 0 {
            err(
                0..0,
                format!(
                    "ingest.max_future_ms must not be negative, got {}",
                    i.max_future_ms
                ),
            );
        }
        if !(1..=128).contains(&i.replay_window) {
            err(
                0..0,
                format!(
                    "ingest.replay_window must be 1 to 128, got {}",
                    i.replay_window
                ),
            );
        }
        let trust = config.actuation.min_trust.get_ref();
        if Config::trust_level(trust).is_none() {
            err(
                config.actuation.min_trust.span(),
                format!(
                    "actuation.min_trust {trust:?} is not \"verified\", \"channel\" or \"untrusted\""
                ),
            );
        }
        let mut zones = HashSet::new();
        for z in &config.zones {
            if !zones.insert(z.id.get_ref().as_str()) {
                err(
                    z.id.span(),
                    format!("zone {:?} is declared twice", z.id.get_ref()),
                );
            }
            if !(1..=4).contains(z.security_level.get_ref()) {
                err(
                    z.security_level.span(),
                    format!("security_level of zone {:?} must be 1 to 4", z.id.get_ref()),
                );
            }
        }
        let known = |z: &str| zones.contains(z);
        let zone_list = || {
            let mut v: Vec<&str> = zones.iter().copied().collect();
            v.sort_unstable();
            v.join(", ")
        };
        if !known(config.twinguard.zone.get_ref()) {
            err(
                config.twinguard.zone.span(),
                format!(
                    "twinguard.zone {:?} is not a declared zone (declared: {})",
                    config.twinguard.zone.get_ref(),
                    zone_list()
                ),
            );
        }
        let mut conduit_ids = HashSet::new();
        for c in &config.conduits {
            if !conduit_ids.insert(c.id.get_ref().as_str()) {
                err(
                    c.id.span(),
                    format!("conduit {:?} is declared twice", c.id.get_ref()),
                );
            }
            for end in [&c.from, &c.to] {
                if !known(end.get_ref()) {
                    err(
                        end.span(),
                        format!(
                            "conduit {:?}: zone {:?} is not declared (declared: {})",
                            c.id.get_ref(),
                            end.get_ref(),
                            zone_list()
                        ),
                    );
                }
            }
            for p in c.protocols.get_ref() {
                if !PROTOCOLS.contains(&p.as_str()) {
                    err(
                        c.protocols.span(),
                        format!(
                            "conduit {:?}: unknown protocol {p:?} (known: {})",
                            c.id.get_ref(),
                            PROTOCOLS.join(", ")
                        ),
                    );
                }
            }
        }
        let mut source_ids = HashSet::new();
        for s in &config.sources {
            let id = s.id.get_ref();
            if !source_ids.insert(id.as_str()) {
                err(s.id.span(), format!("source {id:?} is declared twice"));
            }
            if !PROTOCOLS.contains(&s.protocol.get_ref().as_str()) {
                err(
                    s.protocol.span(),
                    format!(
                        "source {id:?}: unknown protocol {:?} (known: {})",
                        s.protocol.get_ref(),
                        PROTOCOLS.join(", ")
                    ),
                );
            }
            if !known(s.zone.get_ref()) {
                err(
                    s.zone.span(),
                    format!(
                        "source {id:?}: zone {:?} is not declared (declared: {})",
                        s.zone.get_ref(),
                        zone_list()
                    ),
                );
            } else if !config.conduits.iter().any(|c| {
                c.from.get_ref() == s.zone.get_ref()
                    && c.to.get_ref() == config.twinguard.zone.get_ref()
                    && c.protocols.get_ref().contains(s.protocol.get_ref())
            }) {
                err(
                    s.zone.span(),
                    format!(
                        "source {id:?}: no conduit allows {} from zone {:?} to twinguard's zone {:?}; the flow would be refused",
                        s.protocol.get_ref(),
                        s.zone.get_ref(),
                        config.twinguard.zone.get_ref()
                    ),
                );
            }
            if let Some(v) = &s.mqtt_version
                && v.get_ref() != "3.1.1"
                && v.get_ref() != "5"
            {
                err(
                    v.span(),
                    format!(
                        "source {id:?}: mqtt_version {:?} is not \"3.1.1\" or \"5\"",
                        v.get_ref()
                    ),
                );
            }
            match s.broker() {
                Err(m) => err(s.broker.span(), format!("source {id:?}: {m}")),
                Ok(Broker::Embedded) if s.username.is_some() || s.password_file.is_some() => {
                    err(
                        s.broker.span(),
                        format!(
                            "source {id:?}: the embedded broker makes its own credentials; remove username and password_file"
                        ),
                    );
                }
                Ok(_) => {}
            }
        }
        for s in &config.sources {
            if let Some(t) = &s.tls
                && t.cert_file.is_some() != t.key_file.is_some()
            {
                let span = t
                    .cert_file
                    .as_ref()
                    .or(t.key_file.as_ref())
                    .map_or(t.ca_file.span(), |f| f.span());
                err(
                    span,
                    format!(
                        "source {:?}: tls needs both cert_file and key_file for mutual TLS, or neither",
                        s.id.get_ref()
                    ),
                );
            }
        }
        if config.sources.is_empty() {
            err(
                0..0,
                "no [[sources]]: twinguard would receive nothing".into(),
            );
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    pub fn default_config() -> Config {
        match Config::parse(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(e) => unreachable!("embedded default configuration is invalid: {e:?}"),
        }
    }

    /// The zone of a source.
    pub fn zone_of(&self, source: &Source) -> String {
        source.zone.get_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::parse(text).err().unwrap_or_default()
    }

    #[test]
    fn default_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].broker(), Ok(Broker::Embedded));
    }

    #[test]
    fn unknown_key_is_located() {
        let text = DEFAULT_CONFIG.replace("max_age_ms = 60000", "max_age_ms = 60000\nmax_agee = 1");
        let e = errors(&text);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("max_agee"), "{e:?}");
        let line = text
            .lines()
            .position(|l| l.starts_with("max_agee"))
            .unwrap()
            + 1;
        assert_eq!(e[0].line, line);
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let text = DEFAULT_CONFIG
            .replace("zone = \"cell\"", "zone = \"cel\"")
            .replace("security_level = 3", "security_level = 7")
            .replace("broker = \"embedded\"", "broker = \"nowhere\"")
            .replace("min_trust = \"verified\"", "min_trust = \"maybe\"");
        let e = errors(&text);
        let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("zone \"cel\" is not declared")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("security_level")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("\"nowhere\"")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("\"maybe\"")), "{msgs:?}");
        let cel_line = text.lines().position(|l| l.contains("\"cel\"")).unwrap() + 1;
        assert!(
            e.iter().any(|x| x.line == cel_line && x.column == 8),
            "{e:?}"
        );
    }

    #[test]
    fn a_flow_without_a_conduit_is_refused() {
        let text = DEFAULT_CONFIG.replace("from = \"cell\"", "from = \"operations\"");
        let e = errors(&text);
        assert!(
            e.iter().any(|e| e
                .message
                .contains("no conduit allows mqtt from zone \"cell\"")),
            "{e:?}"
        );
    }

    #[test]
    fn external_broker_parses() {
        let text = DEFAULT_CONFIG.replace(
            "broker = \"embedded\"",
            "broker = \"10.0.0.5:8883\"\nusername = \"tg\"\npassword_file = \"secrets/p\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.sources[0].broker(),
            Ok(Broker::External {
                host: "10.0.0.5".into(),
                port: 8883
            })
        );
    }
}
