//! The plant server and the source against each other on 127.0.0.1: trust, refusal,
//! subscriptions, writes, calls.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::sync::Arc;
use std::time::Duration;

use opcua_link::pki;
use opcua_link::server::{PlantServer, PlantServerConfig, PlantWrite};
use opcua_link::{
    Connection, Mode, NodeRef, Policy, SourceConfig, Subscribe, UaError, UaEvent, UserIdentity,
};
use plant_model::{Plant, PlantCommand};
use tokio::sync::mpsc;

struct Setup {
    _dir: tempfile::TempDir,
    server: PlantServer,
    writes: mpsc::UnboundedReceiver<PlantWrite>,
    client_pki: std::path::PathBuf,
    server_pki: std::path::PathBuf,
    plant: Arc<Plant>,
}

async fn setup(allow_none: bool) -> Setup {
    setup_in(tempfile::tempdir().unwrap(), allow_none, 0).await
}

async fn setup_in(dir: tempfile::TempDir, allow_none: bool, port: u16) -> Setup {
    // An X.509 user identity the server knows (created once per directory).
    let user_cert = dir.path().join("user-cert.der");
    if !user_cert.exists() {
        let data = opcua::crypto::X509Data {
            key_size: 2048,
            common_name: "twinguard user".into(),
            organization: "twinguard".into(),
            organizational_unit: "test".into(),
            country: "IE".into(),
            state: "Dublin".into(),
            alt_host_names: opcua::crypto::X509Data::alt_host_names(
                "urn:twinguard:user",
                None,
                false,
                false,
                false,
            ),
            certificate_duration_days: 30,
        };
        opcua::crypto::CertificateStore::create_certificate_and_key(
            &data,
            true,
            &user_cert,
            &dir.path().join("user-key.pem"),
        )
        .unwrap();
    }
    let plant = Arc::new(Plant::reference());
    let (tx, writes) = mpsc::unbounded_channel();
    let server_pki = dir.path().join("server-pki");
    // A server restarted on the same port may find the old one still letting go of it.
    let mut attempts = 0;
    let server = loop {
        match PlantServer::start(
            plant.clone(),
            PlantServerConfig {
                host: "127.0.0.1".into(),
                port,
                pki_dir: server_pki.clone(),
                users: vec![("twinguard".into(), "s3cret-for-this-test".into())],
                certificate_users: vec![("operator-cert".into(), dir.path().join("user-cert.der"))],
                allow_none,
            },
            tx.clone(),
        )
        .await
        {
            Ok(server) => break server,
            Err(e) if e.contains("in use") && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    Setup {
        client_pki: dir.path().join("client-pki"),
        server_pki,
        _dir: dir,
        server,
        writes,
        plant,
    }
}

fn source(s: &Setup, policy: Policy, mode: Mode) -> SourceConfig {
    let mut cfg = SourceConfig::new("plc", &s.server.url, policy, mode, s.client_pki.clone());
    cfg.identity = UserIdentity::UserName {
        user: "twinguard".into(),
        password: "s3cret-for-this-test".into(),
    };
    cfg.retry_initial = Duration::from_millis(100);
    cfg.subscribe = vec![
        Subscribe {
            signal: "tank.level".into(),
            node: NodeRef::Path(format!(
                "/{ns}:{}/{ns}:tank/{ns}:tank&.level",
                s.plant.plant.id,
                ns = s.server.namespace()
            )),
            unit: "m".into(),
            sampling_ms: 0.0,
            deadband: None,
            queue_size: 100,
        },
        Subscribe {
            signal: "pump.speed".into(),
            node: NodeRef::Id(format!("ns={};s=pump.speed", s.server.namespace())),
            unit: "rpm".into(),
            sampling_ms: 0.0,
            deadband: None,
            queue_size: 100,
        },
    ];
    cfg
}

/// Trusts each side's certificate on the other, as an installer would.
fn exchange_certificates(s: &Setup, cfg: &SourceConfig) {
    let own = opcua_link::client::own_certificate(cfg).unwrap();
    pki::add_trusted(&s.server_pki, &own).unwrap();
    pki::add_trusted(&cfg.pki_dir, &s.server.certificate().unwrap()).unwrap();
}

async fn values_until(rx: &mut mpsc::Receiver<UaEvent>, n: usize) -> Vec<opcua_link::UaValue> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(UaEvent::Value(v))) => out.push(v),
            Ok(Some(_)) => {}
            other => panic!("no value after {} (got {other:?})", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_server_certificate_is_refused_until_trusted() {
    let s = setup(false).await;
    let cfg = source(&s, Policy::Basic256Sha256, Mode::SignAndEncrypt);
    // twinguard's own certificate is trusted by the server, the server's is not yet ours.
    let own = opcua_link::client::own_certificate(&cfg).unwrap();
    pki::add_trusted(&s.server_pki, &own).unwrap();
    let (tx, _rx) = mpsc::channel(16);
    let err = Connection::connect(&cfg, tx)
        .await
        .err()
        .expect("must be refused");
    let UaError::UntrustedServer { thumbprint, .. } = &err else {
        panic!("wrong error: {err}");
    };
    let msg = err.to_string();
    assert!(msg.contains("twinguard pki trust"), "{msg}");
    let listed = pki::list(&cfg.pki_dir).unwrap();
    assert!(
        listed
            .iter()
            .any(|c| c.state == pki::CertState::Rejected && &c.thumbprint == thumbprint)
    );
    pki::trust(&cfg.pki_dir, &thumbprint[..12]).unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let conn = Connection::connect(&cfg, tx).await.unwrap();
    assert_eq!(conn.security, "SignAndEncrypt/Basic256Sha256");
    assert!(conn.authenticated);
    s.server
        .publish(1_000_000, &vec![1.25; s.plant.signals.len()])
        .unwrap();
    let got = values_until(&mut rx, 2).await;
    assert!(got.iter().any(|v| v.signal == "tank.level"
        && v.value == Some(1.25)
        && v.source_ms == Some(1_000_000)));
    // Rejecting it again closes the door.
    conn.close().await;
    pki::reject(&cfg.pki_dir, &thumbprint[..12]).unwrap();
    let (tx, _rx) = mpsc::channel(16);
    assert!(matches!(
        Connection::connect(&cfg, tx).await,
        Err(UaError::UntrustedServer { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_an_untrusted_client_and_a_wrong_password() {
    let s = setup(false).await;
    let cfg = source(&s, Policy::Aes256Sha256RsaPss, Mode::SignAndEncrypt);
    let own = opcua_link::client::own_certificate(&cfg).unwrap();
    pki::add_trusted(&cfg.pki_dir, &s.server.certificate().unwrap()).unwrap();
    let (tx, _rx) = mpsc::channel(16);
    let err = Connection::connect(&cfg, tx)
        .await
        .err()
        .expect("client cert not trusted");
    assert!(
        err.to_string().contains("does not trust twinguard") || err.to_string().contains("Bad"),
        "{err}"
    );
    // The server put the unknown certificate in its rejected list; its administrator
    // trusts it from there.
    let thumb = pki::describe(&own, pki::CertState::Own, "own".into())
        .unwrap()
        .thumbprint;
    pki::trust(&s.server_pki, &thumb).unwrap();
    let mut wrong = cfg.clone();
    wrong.identity = UserIdentity::UserName {
        user: "twinguard".into(),
        password: "wrong".into(),
    };
    let (tx, _rx) = mpsc::channel(16);
    let err = Connection::connect(&wrong, tx)
        .await
        .err()
        .expect("wrong password");
    assert!(err.to_string().contains("Bad"), "{err}");
    let (tx, _rx) = mpsc::channel(16);
    Connection::connect(&cfg, tx).await.unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_calls_reach_the_plant_and_samples_keep_their_order() {
    let mut s = setup(false).await;
    let cfg = source(&s, Policy::Basic256Sha256, Mode::Sign);
    exchange_certificates(&s, &cfg);
    let (tx, mut rx) = mpsc::channel(4096);
    let mut conn = Connection::connect(&cfg, tx).await.unwrap();
    // The same value each time: a steady signal still reports every sample.
    for i in 0..20 {
        let v: Vec<f64> = (0..s.plant.signals.len()).map(|_| 0.0).collect();
        s.server
            .publish(2_000_000 + i64::from(i) * 1000, &v)
            .unwrap();
    }
    let got = values_until(&mut rx, 40).await;
    let level: Vec<i64> = got
        .iter()
        .filter(|v| {
            v.signal == "tank.level"
                && v.good
                && v.source_ms
                    .is_some_and(|t| (2_000_000..3_000_000).contains(&t))
        })
        .filter_map(|v| v.source_ms)
        .collect();
    assert_eq!(
        level.len(),
        20,
        "every sample of a burst arrives: {level:?}"
    );
    assert!(level.windows(2).all(|w| w[0] < w[1]), "{level:?}");

    let speed = NodeRef::Id(format!("ns={};s=pump.speed_sp", s.server.namespace()));
    conn.write(&speed, 1650.0).await.unwrap();
    let w = s.writes.recv().await.unwrap();
    assert_eq!(
        w.command,
        PlantCommand::SetSetpoint {
            setpoint: "pump.speed_sp".into(),
            value: 1650.0
        }
    );
    // The plant shows the setpoint it now holds.
    s.server
        .show_setpoints(2_100_000, |sp| (sp == "pump.speed_sp").then_some(1650.0))
        .unwrap();
    assert_eq!(conn.read(&speed).await.unwrap(), Some(1650.0));
    // Out of the setpoint's range: the server refuses.
    let err = conn.write(&speed, 1.0e9).await.unwrap_err();
    assert!(err.to_string().contains("BadOutOfRange"), "{err}");
    let ns = s.server.namespace();
    let plant_obj = NodeRef::Path(format!("/{ns}:{}", s.plant.plant.id));
    let stop = NodeRef::Path(format!("/{ns}:{}/{ns}:StopLine", s.plant.plant.id));
    conn.call(&plant_obj, &stop, &[]).await.unwrap();
    assert_eq!(
        s.writes.recv().await.unwrap().command,
        PlantCommand::StopLine
    );
    // A measured value is not writable.
    let level = NodeRef::Id(format!("ns={};s=tank.level", s.server.namespace()));
    assert!(conn.write(&level, 1.0).await.is_err());
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_none_is_refused_unless_allowed() {
    let s = setup(true).await;
    let mut cfg = source(&s, Policy::None, Mode::None);
    let (tx, _rx) = mpsc::channel(16);
    let err = Connection::connect(&cfg, tx)
        .await
        .err()
        .expect("None refused");
    assert!(matches!(err, UaError::SecurityNoneRefused { .. }), "{err}");
    cfg.allow_security_none = true;
    let (tx, mut rx) = mpsc::channel(64);
    let conn = Connection::connect(&cfg, tx).await.unwrap();
    assert!(!conn.authenticated);
    assert!(conn.peer_certificate.is_some());
    s.server
        .publish(3_000_000, &vec![0.5; s.plant.signals.len()])
        .unwrap();
    values_until(&mut rx, 2).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_node_is_named() {
    let s = setup(false).await;
    let mut cfg = source(&s, Policy::Basic256Sha256, Mode::SignAndEncrypt);
    exchange_certificates(&s, &cfg);
    cfg.subscribe[0].node = NodeRef::Path(format!(
        "/{ns}:{}/{ns}:tank/{ns}:no&.such&.signal",
        s.plant.plant.id,
        ns = s.server.namespace()
    ));
    let (tx, _rx) = mpsc::channel(16);
    let err = Connection::connect(&cfg, tx)
        .await
        .err()
        .expect("missing node");
    let msg = err.to_string();
    assert!(
        msg.contains("no&.such&.signal") && msg.contains("BadNoMatch"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_is_reported_and_the_subscription_comes_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let s = setup(false).await;
    let mut cfg = source(&s, Policy::Basic256Sha256, Mode::SignAndEncrypt);
    cfg.retry_max = Duration::from_millis(500);
    exchange_certificates(&s, &cfg);
    let (tx, mut rx) = mpsc::channel(1024);
    let conn = Connection::connect(&cfg, tx).await.unwrap();
    s.server
        .publish(4_000_000, &vec![1.0; s.plant.signals.len()])
        .unwrap();
    values_until(&mut rx, 2).await;
    // The server goes away: the source says so.
    let port = s.server.port;
    let Setup {
        _dir: dir, server, ..
    } = s;
    drop(server);
    let lost = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rx.recv().await {
                Some(UaEvent::Lost { reason }) => return reason,
                Some(_) => {}
                None => panic!("channel closed"),
            }
        }
    })
    .await
    .expect("the loss is reported");
    assert!(!lost.is_empty());
    // It comes back on the same port with the same certificate: the session is re-created
    // and the subscription re-created without anyone's help; values flow again.
    let s = setup_in(dir, false, port).await;
    let restored = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(UaEvent::Restored { .. }) = rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(restored.is_ok(), "no reconnection within 30 s");
    let mut got = Vec::new();
    for i in 0..100 {
        s.server
            .publish(5_000_000 + i * 1000, &vec![2.0; s.plant.signals.len()])
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(e) = rx.try_recv() {
            if let UaEvent::Value(v) = e {
                got.push(v);
            }
        }
        if got
            .iter()
            .any(|v| v.source_ms.is_some_and(|t| t >= 5_000_000))
        {
            break;
        }
    }
    assert!(
        got.iter()
            .any(|v| v.value == Some(2.0) && v.source_ms.is_some_and(|t| t >= 5_000_000)),
        "values flow again on the re-created subscription: {got:?}"
    );
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_user_tokens_are_accepted_only_for_known_certificates() {
    let s = setup(false).await;
    let mut cfg = source(&s, Policy::Basic256Sha256, Mode::SignAndEncrypt);
    exchange_certificates(&s, &cfg);
    let dir = s.server_pki.parent().unwrap().to_path_buf();
    cfg.identity = UserIdentity::Certificate {
        cert: dir.join("user-cert.der"),
        key: dir.join("user-key.pem"),
    };
    let (tx, _rx) = mpsc::channel(64);
    Connection::connect(&cfg, tx).await.unwrap().close().await;
    // A user certificate the server does not know is refused.
    let other = tempfile::tempdir().unwrap();
    let data = opcua::crypto::X509Data {
        key_size: 2048,
        common_name: "somebody else".into(),
        organization: "x".into(),
        organizational_unit: "x".into(),
        country: "IE".into(),
        state: "x".into(),
        alt_host_names: opcua::crypto::X509Data::alt_host_names("urn:x", None, false, false, false),
        certificate_duration_days: 30,
    };
    opcua::crypto::CertificateStore::create_certificate_and_key(
        &data,
        true,
        &other.path().join("c.der"),
        &other.path().join("k.pem"),
    )
    .unwrap();
    cfg.identity = UserIdentity::Certificate {
        cert: other.path().join("c.der"),
        key: other.path().join("k.pem"),
    };
    let (tx, _rx) = mpsc::channel(64);
    let err = Connection::connect(&cfg, tx)
        .await
        .err()
        .expect("unknown user certificate");
    assert!(err.to_string().contains("Bad"), "{err}");
}
