//! Accounts and per-account topic permissions for the embedded broker. rumqttd has no topic
//! ACLs, so clients reach it only through this proxy: it reads each connection's CONNECT,
//! checks the account's password itself (a wrong or missing one gets CONNACK "bad user name
//! or password"), and forwards the CONNECT with the proxy's own credentials, which are
//! generated per run and are the only ones rumqttd accepts: a client that finds rumqttd's
//! internal port cannot log in there with a device's password. It then checks every PUBLISH
//! topic and SUBSCRIBE filter the client sends against the account's permissions, and
//! forwards the packet unchanged.
//! A client that publishes or subscribes outside its permissions is disconnected (as
//! mosquitto does for MQTT 3.1.1 clients it cannot otherwise tell) and the refusal is
//! counted and logged. Packets are parsed with bounded sizes; anything malformed closes
//! the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest packet forwarded (the broker's own limit plus headers).
const MAX_PACKET: usize = frames::MAX_ENVELOPE_BYTES + 4096;

/// What one account may do: MQTT topic filters.
#[derive(Debug, Clone, Default)]
pub struct Perms {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Perms {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish
            .iter()
            .any(|f| rumqttc::v5::mqttbytes::matches(topic, f))
    }

    /// A filter is allowed when it is one of the allowed filters, or a plain topic one of
    /// them matches.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|f| {
            f == filter
                || (!rumqttc::v5::mqttbytes::has_wildcards(filter)
                    && rumqttc::v5::mqttbytes::matches(filter, f))
        })
    }
}

/// Refusals, for the report: "account: what".
pub type Refusals = Arc<Mutex<Vec<String>>>;

/// What the proxy enforces: each account's password and permissions, and the login it
/// presents to the broker behind it.
pub struct Accounts {
    pub passwords: HashMap<String, String>,
    pub acl: HashMap<String, Perms>,
    /// The proxy's own user name and password at the broker.
    pub upstream_login: (String, String),
}

impl Accounts {
    /// Whether `password` is the account's (compared in constant time).
    fn password_ok(&self, account: &str, password: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.passwords
            .get(account)
            .is_some_and(|p| bool::from(p.as_bytes().ct_eq(password.as_bytes())))
    }
}

/// Serves the proxy on `listener`, forwarding to the broker at `upstream`.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    v5: bool,
    accounts: Arc<Accounts>,
    refusals: Refusals,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (accounts, refusals) = (accounts.clone(), refusals.clone());
        tokio::spawn(async move {
            if let Err(e) = relay(client, upstream, v5, &accounts, &refusals).await {
                tracing::debug!(error = %e, "MQTT ACL proxy connection ended");
            }
        });
    }
}

fn record(refusals: &Refusals, account: &str, what: &str) {
    if let Ok(mut r) = refusals.lock()
        && r.len() < 1000
    {
        r.push(format!("{account}: {what}"));
    }
}

async fn read_packet(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        match frame_len(buf) {
            Ok(Some(n)) => {
                let rest = buf.split_off(n);
                let packet = std::mem::replace(buf, rest);
                return Ok(Some(packet));
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    v5: bool,
    accounts: &Accounts,
    refusals: &Refusals,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let mut buf = Vec::new();
    let Some(connect) = read_packet(&mut cr, &mut buf).await? else {
        return Ok(());
    };
    if connect.first().map(|b| b >> 4) != Some(1) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the first packet is not CONNECT",
        ));
    }
    let Some((account, password)) = connect_login(&connect, v5) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "malformed CONNECT",
        ));
    };
    if !accounts.password_ok(&account, &password) {
        tracing::warn!(account = %account, "MQTT client with a wrong or missing password: refused");
        record(refusals, &account, "wrong or missing password");
        // CONNACK "bad user name or password" (3.1.1 code 4, MQTT 5 reason 0x86).
        let connack: &[u8] = if v5 {
            &[0x20, 0x03, 0x00, 0x86, 0x00]
        } else {
            &[0x20, 0x02, 0x00, 0x04]
        };
        cw.write_all(connack).await?;
        let _ = cw.shutdown().await;
        return Ok(());
    }
    let Some(connect) = with_login(&connect, v5, &accounts.upstream_login) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "CONNECT cannot be re-encoded",
        ));
    };
    let perms = accounts.acl.get(&account).cloned().unwrap_or_default();
    let server = TcpStream::connect(upstream).await?;
    let (mut sr, mut sw) = server.into_split();
    sw.write_all(&connect).await?;
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let refuse = |what: String| {
        tracing::warn!(account = %account, %what, "MQTT client outside its topic permissions: disconnected");
        record(refusals, &account, &what);
    };
    while let Some(packet) = read_packet(&mut cr, &mut buf).await? {
        match packet.first().map(|b| b >> 4) {
            Some(3) => match publish_topic(&packet) {
                Some(t) if perms.may_publish(&t) => {}
                Some(t) => {
                    refuse(format!("publish to {t}"));
                    break;
                }
                None => break,
            },
            Some(8) => match subscribe_filters(&packet, v5) {
                Some(fs) => {
                    if let Some(f) = fs.iter().find(|f| !perms.may_subscribe(f)) {
                        refuse(format!("subscribe to {f}"));
                        break;
                    }
                }
                None => break,
            },
            _ => {}
        }
        sw.write_all(&packet).await?;
    }
    let _ = sw.shutdown().await;
    down.abort();
    Ok(())
}

/// Remaining-length varint at `b[from..]`: (value, bytes used); None if incomplete.
fn varint(b: &[u8], from: usize) -> Result<Option<(usize, usize)>, &'static str> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(byte) = b.get(from + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err("malformed remaining length")
}

/// The length of the first complete packet in `b`, if there is one.
fn frame_len(b: &[u8]) -> Result<Option<usize>, &'static str> {
    if b.is_empty() {
        return Ok(None);
    }
    let Some((remaining, n)) = varint(b, 1)? else {
        return Ok(None);
    };
    let total = 1 + n + remaining;
    if total > MAX_PACKET {
        return Err("packet larger than the broker accepts");
    }
    Ok((b.len() >= total).then_some(total))
}

/// A length-prefixed UTF-8 string at `*at`, advancing it.
fn string(b: &[u8], at: &mut usize) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]));
    let s = b.get(*at + 2..*at + 2 + len)?;
    *at += 2 + len;
    String::from_utf8(s.to_vec()).ok()
}

fn skip_properties(b: &[u8], at: &mut usize) -> Option<()> {
    let (len, n) = varint(b, *at).ok()??;
    *at += n + len;
    (*at <= b.len()).then_some(())
}

/// Offset of the variable header.
fn body_start(b: &[u8]) -> Option<usize> {
    let (_, n) = varint(b, 1).ok()??;
    Some(1 + n)
}

fn publish_topic(b: &[u8]) -> Option<String> {
    let mut at = body_start(b)?;
    string(b, &mut at)
}

fn subscribe_filters(b: &[u8], v5: bool) -> Option<Vec<String>> {
    let mut at = body_start(b)? + 2;
    if v5 {
        skip_properties(b, &mut at)?;
    }
    let mut filters = Vec::new();
    while at < b.len() {
        filters.push(string(b, &mut at)?);
        at += 1;
    }
    (!filters.is_empty()).then_some(filters)
}

/// The user name and password of a CONNECT (empty strings when absent), parsed by the
/// MQTT client library's own decoder.
fn connect_login(b: &[u8], v5: bool) -> Option<(String, String)> {
    let mut buf = bytes::BytesMut::from(b);
    if v5 {
        use rumqttc::v5::mqttbytes::v5::Packet;
        match Packet::read(&mut buf, Some(MAX_PACKET as u32)).ok()? {
            Packet::Connect(_, _, login) => {
                Some(login.map_or_else(Default::default, |l| (l.username, l.password)))
            }
            _ => None,
        }
    } else {
        use rumqttc::mqttbytes::v4::Packet;
        match Packet::read(&mut buf, MAX_PACKET).ok()? {
            Packet::Connect(c) => Some(
                c.login
                    .map_or_else(Default::default, |l| (l.username, l.password)),
            ),
            _ => None,
        }
    }
}

/// The same CONNECT with `login` in place of the client's user name and password.
fn with_login(b: &[u8], v5: bool, login: &(String, String)) -> Option<Vec<u8>> {
    let mut buf = bytes::BytesMut::from(b);
    let mut out = bytes::BytesMut::new();
    if v5 {
        use rumqttc::v5::mqttbytes::v5::{Login, Packet};
        match Packet::read(&mut buf, Some(MAX_PACKET as u32)).ok()? {
            Packet::Connect(c, will, _) => {
                let login = Login {
                    username: login.0.clone(),
                    password: login.1.clone(),
                };
                Packet::Connect(c, will, Some(login))
                    .write(&mut out, None)
                    .ok()?;
            }
            _ => return None,
        }
    } else {
        use rumqttc::mqttbytes::v4::{Login, Packet};
        match Packet::read(&mut buf, MAX_PACKET).ok()? {
            Packet::Connect(mut c) => {
                c.login = Some(Login::new(login.0.clone(), login.1.clone()));
                c.write(&mut out).ok()?;
            }
            _ => return None,
        }
    }
    Some(out.to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn packets_are_read_as_the_client_library_writes_them() {
        use rumqttc::mqttbytes::v4;
        let mut b = BytesMut::new();
        let mut c = v4::Connect::new("dev-1");
        c.set_login("gw-tank", "secret");
        c.write(&mut b).unwrap();
        assert_eq!(frame_len(&b).unwrap(), Some(b.len()));
        assert_eq!(
            connect_login(&b, false),
            Some(("gw-tank".to_string(), "secret".to_string()))
        );
        let rewritten = with_login(&b, false, &("proxy".into(), "internal".into())).unwrap();
        assert_eq!(
            connect_login(&rewritten, false),
            Some(("proxy".to_string(), "internal".to_string()))
        );
        let mut b = BytesMut::new();
        let mut publish = v4::Publish::new(
            "twinguard/line1/tank/telemetry",
            rumqttc::QoS::AtLeastOnce,
            vec![1u8; 300],
        );
        publish.pkid = 5;
        publish.write(&mut b).unwrap();
        assert_eq!(frame_len(&b).unwrap(), Some(b.len()));
        assert_eq!(frame_len(b.get(..b.len() - 1).unwrap()).unwrap(), None);
        assert_eq!(
            publish_topic(&b).as_deref(),
            Some("twinguard/line1/tank/telemetry")
        );
        let mut b = BytesMut::new();
        let mut sub = v4::Subscribe::new("twinguard/line1/tank/cmd", rumqttc::QoS::AtLeastOnce);
        sub.pkid = 7;
        sub.write(&mut b).unwrap();
        assert_eq!(
            subscribe_filters(&b, false),
            Some(vec!["twinguard/line1/tank/cmd".to_string()])
        );

        use rumqttc::v5::mqttbytes::v5 as m5;
        let mut b = BytesMut::new();
        m5::Connect {
            keep_alive: 30,
            client_id: "x".into(),
            clean_start: true,
            properties: Some(m5::ConnectProperties {
                session_expiry_interval: Some(10),
                ..Default::default()
            }),
        }
        .write(
            &None,
            &Some(m5::Login {
                username: "twinguard".into(),
                password: "p".into(),
            }),
            &mut b,
        )
        .unwrap();
        assert_eq!(
            connect_login(&b, true),
            Some(("twinguard".to_string(), "p".to_string()))
        );
        let rewritten = with_login(&b, true, &("proxy".into(), "internal".into())).unwrap();
        assert_eq!(
            connect_login(&rewritten, true),
            Some(("proxy".to_string(), "internal".to_string()))
        );
        // The rest of the CONNECT (here the session expiry) is kept.
        let mut r = bytes::BytesMut::from(rewritten.as_slice());
        match m5::Packet::read(&mut r, None).unwrap() {
            m5::Packet::Connect(c, _, _) => {
                assert_eq!(c.client_id, "x");
                assert_eq!(c.properties.unwrap().session_expiry_interval, Some(10));
            }
            other => panic!("not a CONNECT: {other:?}"),
        }
        let mut b = BytesMut::new();
        let mut sub = m5::Subscribe::new(
            m5::Filter::new(
                "twinguard/line1/+/telemetry",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            ),
            Some(m5::SubscribeProperties {
                id: Some(3),
                user_properties: vec![],
            }),
        );
        sub.pkid = 9;
        sub.write(&mut b).unwrap();
        assert_eq!(
            subscribe_filters(&b, true),
            Some(vec!["twinguard/line1/+/telemetry".to_string()])
        );
    }

    #[test]
    fn permissions_match_topics_and_filters() {
        let p = Perms {
            publish: vec!["twinguard/line1/tank/telemetry".into()],
            subscribe: vec![
                "twinguard/line1/tank/cmd".into(),
                "spBv1.0/+/NCMD/gw-tank".into(),
            ],
        };
        assert!(p.may_publish("twinguard/line1/tank/telemetry"));
        assert!(!p.may_publish("twinguard/line1/pump/telemetry"));
        assert!(p.may_subscribe("twinguard/line1/tank/cmd"));
        assert!(p.may_subscribe("spBv1.0/bottling/NCMD/gw-tank"));
        assert!(!p.may_subscribe("twinguard/line1/+/cmd"));
        assert!(!p.may_subscribe("#"));
        assert!(frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f]).is_err(),
            "too large"
        );
    }
}
