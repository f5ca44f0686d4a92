//! The MQTT source: subscribes to telemetry topics and hands raw frames to the caller.
//!
//! Works with the embedded broker and with any external MQTT 3.1.1 broker. The channel to
//! the caller is bounded: when the pipeline is busy the source waits, and the broker's
//! QoS 1 flow control pushes back on the publishers instead of memory growing.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A frame as it arrived.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Broker address, credentials and TLS.
#[derive(Clone)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS with server verification against `ca_pem` and, for mutual TLS, a client
    /// certificate and key. The server's certificate must name `host`.
    pub tls: Option<TlsFiles>,
    pub version: MqttVersion,
    /// Keep the session at the broker between connections (MQTT 3.1.1 clean session off;
    /// MQTT 5 clean start off with a session expiry of a day): QoS 1 messages that arrive
    /// while twinguard is away, or across a restart of a broker that persists sessions,
    /// are delivered when it is back. Needs a client id that stays the same.
    pub persistent_session: bool,
}

/// How long an MQTT 5 broker keeps a persistent session after the client leaves.
const SESSION_EXPIRY_S: u32 = 86_400;

/// The protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

/// A connected client of either protocol version, for publishing.
#[derive(Clone)]
pub enum Publisher {
    V311(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Publisher {
    /// Connects and returns the publisher; its event loop runs on a task of its own.
    pub fn connect(endpoint: &BrokerEndpoint, client_id: &str) -> Publisher {
        match endpoint.version {
            MqttVersion::V311 => {
                let (client, mut ev) = AsyncClient::new(endpoint.options(client_id), 64);
                tokio::spawn(async move {
                    loop {
                        match ev.poll().await {
                            Ok(_) => {}
                            // Every handle dropped: the loop ends instead of reconnecting
                            // under a client id that someone else may now use.
                            Err(rumqttc::ConnectionError::RequestsDone) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                });
                Publisher::V311(client)
            }
            MqttVersion::V5 => {
                let (client, mut ev) =
                    rumqttc::v5::AsyncClient::new(endpoint.options_v5(client_id), 64);
                tokio::spawn(async move {
                    loop {
                        match ev.poll().await {
                            Ok(_) => {}
                            Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                });
                Publisher::V5(client)
            }
        }
    }

    /// Queues a QoS 1 publish without waiting; fails when the queue is full.
    pub fn try_publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Publisher::V311(c) => c
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
            Publisher::V5(c) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .map_err(|e| e.to_string()),
        }
    }
}

/// PEM-encoded trust anchor and optional client identity.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// SHA-256 of the broker certificate the last handshake verified (for provenance).
    pub peer: PeerCertificate,
}

impl TlsFiles {
    pub fn new(ca_pem: Vec<u8>, client: Option<(Vec<u8>, Vec<u8>)>) -> TlsFiles {
        TlsFiles {
            ca_pem,
            client,
            peer: PeerCertificate::default(),
        }
    }

    /// The rustls configuration: the broker verified against `ca_pem` (WebPKI, with the
    /// ring provider), the verified certificate's SHA-256 recorded in `peer`.
    fn rustls(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let c = c.map_err(|e| format!("CA file: {e}"))?;
            roots.add(c).map_err(|e| format!("CA file: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the CA file holds no certificate".into());
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let verifier = std::sync::Arc::new(Recording {
            inner,
            seen: self.peer.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key: {e}"))
            }
        }
    }

    fn transport(&self) -> rumqttc::Transport {
        match self.rustls() {
            Ok(c) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                std::sync::Arc::new(c),
            )),
            // Let the client report the problem when it connects.
            Err(e) => {
                tracing::warn!(error = %e, "TLS configuration");
                rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                    ca: self.ca_pem.clone(),
                    alpn: None,
                    client_auth: self.client.clone(),
                })
            }
        }
    }
}

/// The broker certificate a TLS handshake verified, as a SHA-256 hex string.
pub type PeerCertificate = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// WebPKI verification that remembers what it verified.
#[derive(Debug)]
struct Recording {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    seen: PeerCertificate,
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        use sha2::Digest;
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(hex::encode(sha2::Sha256::digest(end_entity.as_ref())));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|t| if t.client.is_some() { "mtls" } else { "tls" }),
            )
            .finish()
    }
}

impl BrokerEndpoint {
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(
            frames::MAX_ENVELOPE_BYTES + 1024,
            frames::MAX_ENVELOPE_BYTES + 1024,
        );
        o.set_clean_session(!self.persistent_session);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(tls.transport());
        }
        o
    }

    pub fn options_v5(&self, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some((frames::MAX_ENVELOPE_BYTES + 1024) as u32));
        o.set_clean_start(!self.persistent_session);
        if self.persistent_session {
            o.set_session_expiry_interval(Some(SESSION_EXPIRY_S));
        }
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(tls.transport());
        }
        o
    }

    /// The transport security this endpoint uses: `none`, `tls` or `mtls`.
    pub fn security(&self) -> &'static str {
        match &self.tls {
            None => "none",
            Some(t) if t.client.is_some() => "mtls",
            Some(_) => "tls",
        }
    }
}

/// The newest connection error of a subscriber, for the operator.
pub type LastError = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// Connects, subscribes to `filters` with QoS 1 and forwards every publish to `tx` until
/// `tx` is closed. Connection errors are retried with backoff and the newest is kept in
/// `last_error`. `ready` fires once the first subscription is acknowledged.
pub async fn run_subscriber(
    endpoint: BrokerEndpoint,
    client_id: String,
    filters: Vec<String>,
    tx: mpsc::Sender<RawFrame>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    last_error: LastError,
) {
    let sub = Subscription {
        client_id,
        filters,
        tx,
        ready,
        last_error,
    };
    match endpoint.version {
        MqttVersion::V311 => {
            let link = AsyncClient::new(endpoint.options(&sub.client_id), 256);
            sub.drive(link).await;
        }
        MqttVersion::V5 => {
            let link = rumqttc::v5::AsyncClient::new(endpoint.options_v5(&sub.client_id), 256);
            sub.drive(link).await;
        }
    }
}

/// What a subscriber's event loop reports, whichever the protocol version.
enum SubEvent {
    ConnAck,
    SubAck,
    Publish(RawFrame),
    Other,
}

/// A client and its event loop, of either protocol version.
trait SubscriberLink {
    async fn next(&mut self) -> Result<SubEvent, String>;
    async fn subscribe(&mut self, filter: String) -> Result<(), String>;
    async fn disconnect(&mut self);
}

impl SubscriberLink for (AsyncClient, rumqttc::EventLoop) {
    async fn next(&mut self) -> Result<SubEvent, String> {
        Ok(match self.1.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => SubEvent::ConnAck,
            Event::Incoming(Packet::SubAck(_)) => SubEvent::SubAck,
            Event::Incoming(Packet::Publish(p)) => SubEvent::Publish(RawFrame {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
            }),
            _ => SubEvent::Other,
        })
    }

    async fn subscribe(&mut self, filter: String) -> Result<(), String> {
        self.0
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())
    }

    async fn disconnect(&mut self) {
        let _ = self.0.disconnect().await;
    }
}

impl SubscriberLink for (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    async fn next(&mut self) -> Result<SubEvent, String> {
        use rumqttc::v5::Event as E5;
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        Ok(match self.1.poll().await.map_err(|e| e.to_string())? {
            E5::Incoming(P5::ConnAck(_)) => SubEvent::ConnAck,
            E5::Incoming(P5::SubAck(_)) => SubEvent::SubAck,
            E5::Incoming(P5::Publish(p)) => SubEvent::Publish(RawFrame {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
            }),
            _ => SubEvent::Other,
        })
    }

    async fn subscribe(&mut self, filter: String) -> Result<(), String> {
        self.0
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())
    }

    async fn disconnect(&mut self) {
        let _ = self.0.disconnect().await;
    }
}

/// A subscriber's settings and outputs.
struct Subscription {
    client_id: String,
    filters: Vec<String>,
    tx: mpsc::Sender<RawFrame>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    last_error: LastError,
}

impl Subscription {
    async fn drive(mut self, mut link: impl SubscriberLink) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match link.next().await {
                Ok(SubEvent::ConnAck) => {
                    backoff = Duration::from_millis(100);
                    for f in &self.filters {
                        if let Err(e) = link.subscribe(f.clone()).await {
                            tracing::warn!(filter = %f, error = %e, "subscribe failed");
                        }
                    }
                }
                Ok(SubEvent::SubAck) => {
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(SubEvent::Publish(frame)) => {
                    if self.tx.send(frame).await.is_err() {
                        link.disconnect().await;
                        return;
                    }
                }
                Ok(SubEvent::Other) => {}
                Err(e) => {
                    if self.tx.is_closed() {
                        return;
                    }
                    tracing::warn!(client = %self.client_id, error = %e, "mqtt connection error, retrying");
                    if let Ok(mut slot) = self.last_error.lock() {
                        *slot = Some(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
